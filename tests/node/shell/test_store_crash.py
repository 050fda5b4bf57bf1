"""Nothing acknowledged is lost: SIGKILL a writer mid-stream, reopen, check everything.

A subprocess writes blob i then record i in a loop and prints i once both calls have
returned (the acknowledgement). The test reads acknowledgements from the pipe (no sleeps),
kills the writer at a different count each round, reopens the store with a full rehash,
and checks that every acknowledged write is present and intact and nothing corrupt is
visible. The rounds share one home, so recovery also runs over earlier rounds' debris.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

from node.shell.store import Store

WRITER = r"""
import hashlib, itertools, sys
from pathlib import Path
from node.shell.store import Store

def blob(i):
    return hashlib.sha256(b"blob %d" % i).digest() * (1 + (i * 7919) % 4096)

store = Store.open(Path(sys.argv[1]))
for i in itertools.count(int(sys.argv[2])):
    data = blob(i)
    store.put_blob(data, hashlib.sha256(data).digest())
    store.put_record(hashlib.sha256(b"record %d" % i).digest(), "commit", b"%d" % i)
    print(i, flush=True)
"""


def blob(i: int) -> bytes:
    return hashlib.sha256(b"blob %d" % i).digest() * (1 + (i * 7919) % 4096)


def record_id(i: int) -> bytes:
    return hashlib.sha256(b"record %d" % i).digest()


def run_and_kill(home: Path, start: int, acks: int) -> list[int]:
    """Start a writer at index ``start``, SIGKILL it right after its ``acks``-th ack."""
    cmd = [sys.executable, "-c", WRITER, str(home), str(start)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    acked: list[int] = []
    try:
        while len(acked) < acks:
            line = proc.stdout.readline()  # blocks until the writer acknowledges
            assert line, proc.stderr.read().decode()
            acked.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


def check_store(home: Path, acked: set[int]) -> None:
    with Store.open(home, rehash=True) as store:
        assert store.recovery.dropped == []  # no indexed blob was ever torn
        for i in acked:
            assert store.get_record(record_id(i)) is not None, f"acked record {i} lost"
            path = store.blob_path(hashlib.sha256(blob(i)).digest())
            assert path is not None, f"acked blob {i} lost"
            assert path.read_bytes() == blob(i)
        for record in store.records():  # a visible record always has its blob
            assert store.has_blob(hashlib.sha256(blob(int(record.data))).digest())
    leftovers = list((home / "store" / "blobs").glob("*/.tmp-*"))
    assert leftovers == []


def test_sigkill_never_loses_an_acknowledged_write(tmp_path: Path) -> None:
    acked: set[int] = set()
    start = 0
    for round_ in range(10):
        got = run_and_kill(tmp_path, start, acks=1 + 3 * round_)
        acked.update(got)
        start = max(got) + 1  # the killed, unacknowledged write is redone: idempotent
        check_store(tmp_path, acked)
    with Store.open(tmp_path) as store:
        assert store.recovery.dropped == []
        assert store.recovery.temp_files_removed == 0
        assert store.statistics().records >= len(acked)
