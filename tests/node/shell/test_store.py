"""The store's contract: verified content-addressed blobs, an idempotent record index,
one process per home, recovery that reports what it repaired, blobs rehashed before they
are served, `medforge store check`, and a full disk that raises ``StoreError`` and leaves
nothing half-written behind."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from crypto.records import Commit
from node.cli import main as cli
from node.errors import BlobNotFound, CorruptBlob, StoreError, StoreLocked
from node.forge.bundle import blob_ref
from node.shell.home import Home
from node.shell.store import Store
from node.shell.transport import LinkUp, MemoryNetwork, MemoryTransport
from tests.conftest import BASE

ROOT = Path(__file__).resolve().parents[3]

DATA = b"adapter bytes " * 1000
SHA = hashlib.sha256(DATA).digest()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path) as s:
        yield s


def all_files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "store" / "blobs").rglob("*") if p.is_file())


def test_blobs_are_content_addressed(store: Store, tmp_path: Path) -> None:
    path = store.put_blob(DATA, SHA)
    assert path == tmp_path / "store" / "blobs" / SHA.hex()[:2] / SHA.hex()[2:]
    assert path.read_bytes() == DATA
    assert store.has_blob(SHA)
    assert store.blob_path(SHA) == path
    assert store.blob_size(SHA) == len(DATA)
    assert store.put_blob(DATA, SHA) == path  # idempotent
    assert store.blobs() == [(SHA, len(DATA))]
    assert store.blob_path(b"\0" * 32) is None


def test_a_blob_with_the_wrong_hash_is_never_stored(store: Store, tmp_path: Path) -> None:
    wrong = hashlib.sha256(b"something else").digest()
    for source in (DATA, io.BytesIO(DATA)):
        with pytest.raises(CorruptBlob):
            store.put_blob(source, wrong)
    assert not store.has_blob(wrong)
    assert all_files(tmp_path) == []  # no blob and no temp file left behind


def test_put_blob_from_a_file_or_a_stream(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "upload.bin"
    source.write_bytes(DATA)
    assert store.put_blob(source, SHA).read_bytes() == DATA
    other = b"distilled data"
    assert store.put_blob(io.BytesIO(other), hashlib.sha256(other).digest()).read_bytes() == other


def test_blob_writer_stops_at_the_announced_size(store: Store, tmp_path: Path) -> None:
    with store.blob_writer(SHA, size=len(DATA)) as writer:
        writer.write(DATA[:100])
        with pytest.raises(CorruptBlob):
            writer.write(DATA[100:] + b"extra")
    with store.blob_writer(SHA, size=len(DATA)) as writer:
        writer.write(DATA[:100])  # leaving without commit() discards it
    assert not store.has_blob(SHA)
    assert all_files(tmp_path) == []


def test_records_are_idempotent_and_ordered_by_id(store: Store) -> None:
    assert store.put_record(b"\2" * 32, "commit", b"first", received_at=5.0)
    assert not store.put_record(b"\2" * 32, "commit", b"second", received_at=6.0)
    assert store.put_record(b"\1" * 32, "revocation", b"rev", received_at=7.0)
    assert [r.id for r in store.records()] == [b"\1" * 32, b"\2" * 32]
    [commit] = store.records("commit")
    assert (commit.data, commit.received_at) == (b"first", 5.0)
    assert store.get_record(b"\3" * 32) is None
    assert store.has_record(b"\1" * 32)
    assert store.statistics().records == 2


def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.put_blob(DATA, SHA)
        store.put_record(b"r" * 32, "commit", b"rec", received_at=1.0)
        store.set_verification(b"r" * 32, False, "bad signature", checked_at=2.0)
        store.upsert_peer("12D3KooWpeer", ["/ip4/127.0.0.1/tcp/4001"], last_seen=3.0)
        store.set_state("composite_digest", b"\xab" * 32)
    with Store.open(tmp_path) as store:
        assert store.recovery.dropped == []
        assert store.recovery.adopted_blobs == []
        assert store.has_blob(SHA)
        assert store.get_record(b"r" * 32) is not None
        verification = store.verification(b"r" * 32)
        assert verification is not None
        assert (verification.ok, verification.reason) == (False, "bad signature")
        [peer] = store.peers()
        assert peer.addrs == ("/ip4/127.0.0.1/tcp/4001",)
        assert peer.last_seen == 3.0
        assert store.get_state("composite_digest") == b"\xab" * 32
        assert store.get_state("missing") is None


def test_one_store_per_home(tmp_path: Path) -> None:
    with Store.open(tmp_path), pytest.raises(StoreLocked):
        Store.open(tmp_path)
    Store.open(tmp_path).close()  # the lock goes with the store


def test_a_second_process_is_refused(tmp_path: Path) -> None:
    probe = (
        "import sys; from pathlib import Path; from node.shell.store import Store\n"
        "from node.errors import StoreLocked\n"
        "try: Store.open(Path(sys.argv[1]))\n"
        "except StoreLocked: sys.exit(3)\n"
    )
    with Store.open(tmp_path):
        locked = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], timeout=60)
    assert locked.returncode == 3
    free = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], timeout=60)
    assert free.returncode == 0


def test_recovery_repairs_and_reports(tmp_path: Path) -> None:
    blobs = {name: f"blob {name}".encode() * 50 for name in "abcdef"}
    sha = {name: hashlib.sha256(data).digest() for name, data in blobs.items()}
    with Store.open(tmp_path) as store:
        paths = {name: store.put_blob(data, sha[name]) for name, data in blobs.items()}
    paths["a"].unlink()  # missing
    paths["b"].write_bytes(b"short")  # wrong size
    flipped = bytearray(blobs["c"])
    flipped[0] ^= 1
    paths["c"].write_bytes(bytes(flipped))  # right size, wrong bytes
    (paths["d"].parent / ".tmp-1234-0").write_bytes(b"half a blob")
    orphan = b"renamed, but the index row never committed"
    orphan_sha = hashlib.sha256(orphan).digest()
    (tmp_path / "store" / "blobs" / orphan_sha.hex()[:2]).mkdir(exist_ok=True)
    (tmp_path / "store" / "blobs" / orphan_sha.hex()[:2] / orphan_sha.hex()[2:]).write_bytes(orphan)

    with Store.open(tmp_path) as store:  # the cheap check: sizes only
        report = store.recovery
        assert report.temp_files_removed == 1
        assert report.missing_blobs == [sha["a"]]
        assert report.corrupt_blobs == [sha["b"]]
        assert report.adopted_blobs == [orphan_sha]
        assert store.has_blob(sha["c"])
        summary = report.as_dict()
        assert json.loads(json.dumps(summary)) == summary  # JSON-ready, for `status`
        assert summary == {
            "clean": False,
            "rehashed": False,
            "temp_files_removed": 1,
            "stray_files_removed": 0,
            "missing_blobs": 1,
            "corrupt_blobs": 1,
            "adopted_blobs": 1,
            "missing": [sha["a"].hex()[:12]],
            "corrupt": [sha["b"].hex()[:12]],
            "adopted": [orphan_sha.hex()[:12]],
        }
    with Store.open(tmp_path, rehash=True) as store:
        assert store.recovery.corrupt_blobs == [sha["c"]]
        assert store.recovery.as_dict()["rehashed"] is True
        assert {s for s, _ in store.blobs()} == {sha["d"], sha["e"], sha["f"], orphan_sha}
        assert not paths["c"].exists()
    with Store.open(tmp_path) as store:
        assert store.recovery.clean
        assert store.recovery.as_dict()["clean"] is True


def test_recovery_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Store.open(tmp_path) as store:
        store.put_blob(DATA, SHA).unlink()
    with caplog.at_level("WARNING", logger="node.shell.store"), Store.open(tmp_path):
        pass
    assert f"1 missing ({SHA.hex()[:12]})" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="node.shell.store"), Store.open(tmp_path):
        pass
    assert caplog.text == ""  # a clean open says nothing


def test_recovery_removes_a_stray_that_does_not_match_its_name(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    stray = tmp_path / "store" / "blobs" / SHA.hex()[:2] / SHA.hex()[2:]
    stray.parent.mkdir()
    stray.write_bytes(DATA[:-1] + b"!")  # no index row, and not the bytes of its name
    with Store.open(tmp_path) as store:
        assert store.recovery.stray_files_removed == 1
        assert not store.recovery.clean
        assert not stray.exists()


def flip_bit(path: Path, offset: int = 0, *, keep_mtime: bool = True) -> None:
    """Damage a file the way rot does: same size, one bit, (by default) same mtime."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_serving_path_rehashes_before_the_first_serve(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        path = store.put_blob(DATA, SHA)
    flip_bit(path, 100)  # the size check at open cannot see this
    with Store.open(tmp_path) as store:
        assert store.recovery.clean
        assert store.blob_path(SHA) == path  # the plain lookup still trusts the index
        assert store.serving_path(SHA) is None  # ... serving does not
        assert not store.has_blob(SHA)
        assert not path.exists()
        assert store.damaged_at_serve == [SHA]
        assert store.serving_path(SHA) is None  # asked again: simply not held
        assert store.serving_path(b"\0" * 32) is None


def test_serving_path_hashes_an_unchanged_file_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.shell.store

    hashed: list[Path] = []
    real = node.shell.store.hash_file

    def counting(path: Path) -> bytes:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(node.shell.store, "hash_file", counting)
    path = store.put_blob(DATA, SHA)
    for _ in range(5):
        assert store.serving_path(SHA) == path
    assert hashed == [path]
    flip_bit(path, 7, keep_mtime=False)  # a write changes the mtime: hashed again, refused
    assert store.serving_path(SHA) is None
    assert len(hashed) == 2
    assert not store.has_blob(SHA)
    store.put_blob(DATA, SHA)  # fetched again: a new file (new inode), hashed once more
    assert store.serving_path(SHA) == path
    assert store.serving_path(SHA) == path
    assert len(hashed) == 3


def test_serving_path_refuses_missing_and_resized_files(store: Store) -> None:
    store.put_blob(DATA, SHA).unlink()
    assert store.serving_path(SHA) is None
    assert not store.has_blob(SHA)
    path = store.put_blob(DATA, SHA)
    assert store.serving_path(SHA) == path
    path.write_bytes(DATA + b"more")
    assert store.serving_path(SHA) is None
    assert store.damaged_at_serve == [SHA, SHA]


async def test_a_rotten_blob_is_refused_not_served(tmp_path: Path) -> None:
    """A peer asking for a blob that rotted gets "not found" (it asks another holder), never
    bytes that would fail its hash check and get us banned."""
    network = MemoryNetwork()
    with Store.open(tmp_path / "alice") as held, Store.open(tmp_path / "bob") as wanted:
        flip_bit(held.put_blob(DATA, SHA), 5)
        alice = MemoryTransport(network, b"\1" * 32)
        bob = MemoryTransport(network, b"\2" * 32)
        alice.set_blob_provider(held.serving_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(alice.run)
            await nursery.start(bob.run)
            await bob.connect(alice.listen_addrs[0])
            with trio.fail_after(10):
                assert isinstance(await bob.events.receive(), LinkUp)
                with wanted.blob_writer(SHA, len(DATA)) as writer, pytest.raises(BlobNotFound):
                    await bob.fetch_blob(alice.peer_id, SHA, size=len(DATA), sink=writer)
            assert bob.statistics().blob_mismatches == 0
            assert not bob.is_banned(alice.peer_id)
            alice.stop()
            bob.stop()
        assert not held.has_blob(SHA)
        assert not wanted.has_blob(SHA)


async def test_store_plugs_into_the_transport(tmp_path: Path) -> None:
    """The store serves blobs (``blob_path``) and receives fetches (``blob_writer``)."""
    network = MemoryNetwork()
    with Store.open(tmp_path / "alice") as held, Store.open(tmp_path / "bob") as wanted:
        held.put_blob(DATA, SHA)
        alice = MemoryTransport(network, b"\1" * 32)
        bob = MemoryTransport(network, b"\2" * 32)
        alice.set_blob_provider(held.blob_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(alice.run)
            await nursery.start(bob.run)
            await bob.connect(alice.listen_addrs[0])
            with trio.fail_after(10):
                assert isinstance(await bob.events.receive(), LinkUp)
                with wanted.blob_writer(SHA, len(DATA)) as writer:
                    await bob.fetch_blob(alice.peer_id, SHA, size=len(DATA), sink=writer)
                    writer.commit()
            alice.stop()
            bob.stop()
        assert wanted.blob_path(SHA) is not None


# --- `medforge store check` ------------------------------------------------------------------


def check(home: Path, *flags: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    """Run `medforge store check --json`; (exit status, parsed stdout or None, stderr)."""
    code = cli(["store", "check", "--home", str(home), "--json", *flags])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def damaged_home(tmp_path: Path) -> tuple[Path, dict[str, bytes], dict[str, Path]]:
    """A home whose store has one of every problem `store check` reports."""
    home = Home.init(tmp_path / "home", "home").path
    blobs = {name: f"blob {name}".encode() * 40 for name in ("gone", "cut", "rot", "ok")}
    sha = {name: hashlib.sha256(data).digest() for name, data in blobs.items()}
    with Store.open(home) as store:
        paths = {name: store.put_blob(data, sha[name]) for name, data in blobs.items()}
    paths["gone"].unlink()
    paths["cut"].write_bytes(blobs["cut"][:10])
    flip_bit(paths["rot"], 3)
    (paths["ok"].parent / ".tmp-99-0").write_bytes(b"half")
    orphan = b"complete, but its index row never committed"
    sha["orphan"] = hashlib.sha256(orphan).digest()
    paths["orphan"] = home / "store" / "blobs" / sha["orphan"].hex()[:2] / sha["orphan"].hex()[2:]
    paths["orphan"].parent.mkdir(exist_ok=True)
    paths["orphan"].write_bytes(orphan)
    stray = hashlib.sha256(b"stray").digest()
    paths["stray"] = home / "store" / "blobs" / stray.hex()[:2] / stray.hex()[2:]
    paths["stray"].parent.mkdir(exist_ok=True)
    paths["stray"].write_bytes(b"not the bytes of its name")
    return home, sha, paths


def test_store_check_reports_and_repairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, sha, paths = damaged_home(tmp_path)
    before = sorted(p.relative_to(home) for p in (home / "store" / "blobs").rglob("*"))
    code, report, _ = check(home, capsys=capsys)
    assert code == 1
    assert report == {
        "store": str(home / "store"),
        "live": False,
        "repaired": False,
        "clean": False,
        "problems": 6,
        "blobs_checked": 4,
        "bytes_checked": sum(len(f"blob {n}".encode() * 40) for n in ("gone", "cut", "rot", "ok")),
        "missing": [sha["gone"].hex()],
        "corrupt": [sha["cut"].hex(), sha["rot"].hex()],
        "unindexed": [sha["orphan"].hex()],
        "strays": [str(paths["stray"].relative_to(home / "store"))],
        "temp_files": [str((paths["ok"].parent / ".tmp-99-0").relative_to(home / "store"))],
        "unheld": [],
    }
    # Read-only means read-only: nothing moved.
    assert sorted(p.relative_to(home) for p in (home / "store" / "blobs").rglob("*")) == before

    code, report, _ = check(home, "--repair", capsys=capsys)
    assert code == 0
    assert report["repaired"] is True
    assert report["corrupt"] == [sha["cut"].hex(), sha["rot"].hex()]  # what it found and fixed
    assert not paths["rot"].exists()
    assert not paths["stray"].exists()
    assert not (paths["ok"].parent / ".tmp-99-0").exists()

    code, report, _ = check(home, capsys=capsys)
    assert (code, report["clean"], report["blobs_checked"]) == (0, True, 2)  # ok + adopted orphan
    with Store.open(home) as store:
        assert store.recovery.clean
        assert {s for s, _ in store.blobs()} == {sha["ok"], sha["orphan"]}

    # Human output names the problem too.
    flip_bit(paths["ok"], 0)
    assert cli(["store", "check", "--home", str(home)]) == 1
    out = capsys.readouterr().out
    assert "1 corrupt" in out
    assert sha["ok"].hex() in out
    assert "--repair" in out


def test_store_check_beside_a_running_node_only_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, sha, paths = damaged_home(tmp_path)
    with Store.open(home) as node_store:  # the running node (recovery fixed the cheap things)
        flip_bit(paths["ok"], 1)  # ... and then a blob rots under it
        code, report, _ = check(home, capsys=capsys)
        assert code == 1
        assert report["live"] is True
        assert report["corrupt"] == [sha["rot"].hex(), sha["ok"].hex()]
        (paths["ok"].parent / ".tmp-1-0").write_bytes(b"a fetch in flight")
        code, report, _ = check(home, capsys=capsys)
        assert report["temp_files"]
        assert report["problems"] == 2

        code, report, err = check(home, "--repair", capsys=capsys)
        assert code == 2
        assert report["error"]["kind"] == "StoreLocked"  # --json errors are JSON too
        assert err.startswith("error: StoreLocked: a node is running on")
        assert "without --repair" in err
        assert node_store.has_blob(sha["ok"])  # the refused repair touched nothing
        (paths["ok"].parent / ".tmp-1-0").unlink()
    code, report, _ = check(home, "--repair", capsys=capsys)
    assert (code, report["corrupt"]) == (0, [sha["rot"].hex(), sha["ok"].hex()])


def test_store_check_lists_blobs_stored_commits_lack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = Home.init(tmp_path / "home", "home")
    blobs = {k: f"{k} bytes".encode() for k in ("adapter_config", "adapter_model", "distilled")}
    commit = Commit.create(
        home.identity(),
        network=b"n" * 32,
        seq=0,
        task="t",
        classes=("a", "b"),
        base=BASE,
        blobs={k: blob_ref(v) for k, v in blobs.items()},
        parent=b"p" * 32,
        coeffs=(1.0, 1.0),
        objective={},
    )
    with Store.open(home.path) as store:
        for data in blobs.values():
            store.put_blob(data, hashlib.sha256(data).digest())
        store.put_record(commit.id, "commit", commit.encode())
        store.drop_blob(commit.blobs["adapter_model"].sha256)  # e.g. dropped when it rotted
    code, report, _ = check(home.path, capsys=capsys)
    assert code == 0  # the store itself is sound: the node fetches the blob from peers
    assert report["unheld"] == [commit.blobs["adapter_model"].sha256.hex()]
    assert cli(["store", "check", "--home", str(home.path)]) == 0
    assert "1 blobs named by stored commits are not held" in capsys.readouterr().out
    with Store.open(home.path) as store:  # evidence of an invalid commit is not counted
        store.set_verification(commit.id, False, "ShapeError: no")
    assert check(home.path, capsys=capsys)[1]["unheld"] == []


def test_store_check_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report, _ = check(tmp_path / "nowhere", capsys=capsys)
    assert code == 2
    assert report["error"]["kind"] == "HomeError"
    home = Home.init(tmp_path / "fresh", "fresh").path
    code, _, err = check(home, capsys=capsys)
    assert code == 2
    assert err.startswith("error: StoreError:")
    assert "no node has run" in err
    Store.open(home).close()
    (home / "store" / "index.sqlite3").write_bytes(b"not a database" * 1000)
    code, _, err = check(home, capsys=capsys)
    assert code == 5  # Exit.NODE_FAILED: the store, not the input
    assert err.startswith("error: StoreCorrupt:")


def test_store_check_shows_progress_for_large_stores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.cli import store_cmd

    home = Home.init(tmp_path / "home", "home").path
    with Store.open(home) as store:
        for i in range(5):
            data = b"blob %d" % i
            store.put_blob(data, hashlib.sha256(data).digest())
    assert check(home, capsys=capsys)[2] == ""  # small: silent
    monkeypatch.setattr(store_cmd, "PROGRESS_MIN_BLOBS", 3)
    monkeypatch.setattr(store_cmd, "PROGRESS_EVERY", 2)
    code, _, err = check(home, capsys=capsys)
    assert code == 0
    assert [line.split(" (")[0] for line in err.splitlines()] == [
        "checked 2/5 blobs",
        "checked 4/5 blobs",
        "checked 5/5 blobs",
    ]


# --- a full disk ---------------------------------------------------------------------------

SMALL = b"fits on the disk"
SMALL_SHA = hashlib.sha256(SMALL).digest()


def full_disk_checks(home: Path, big: int, fill: Callable[[], None], *, own_fs: bool) -> None:
    """Every write that does not fit raises StoreError (a real OSError underneath), leaves
    no temp file and indexes nothing; a refused index write gives its space back; what fits
    afterwards is stored; a reopen is clean. ``own_fs``: ``home`` is alone on its filesystem,
    so its free space can be compared."""
    with Store.open(home) as store:
        store.put_blob(SMALL, SMALL_SHA)
        assert store.put_record(b"a" * 32, "commit", b"small")
    with Store.open(home) as store:  # the index checkpointed at close: its WAL is empty
        fill()
        free = os.statvfs(home).f_bfree
        data = os.urandom(big)
        sha = hashlib.sha256(data).digest()

        def fetch_style() -> None:
            with store.blob_writer(sha, big) as writer:
                for i in range(0, big, 1 << 16):
                    writer.write(data[i : i + (1 << 16)])
                writer.commit()

        attempts: list[Callable[[], object]] = [
            lambda: store.put_blob(data, sha),
            lambda: store.put_blob(io.BytesIO(data), sha),
            fetch_style,
        ]
        for attempt in attempts:
            with pytest.raises(StoreError) as info:
                attempt()
            assert not isinstance(info.value, CorruptBlob)
            cause = info.value.__cause__
            assert isinstance(cause, OSError), repr(cause)
            assert cause.errno in (errno.ENOSPC, errno.EFBIG), cause
            assert "disk full" in str(info.value)
            assert not store.has_blob(sha)
            assert all_files(home) == sorted([SMALL_SHA.hex()[2:]])  # no temp file left
        with pytest.raises(StoreError, match="index write failed"):
            store.put_record(b"b" * 32, "commit", data)
        assert not store.has_record(b"b" * 32)
        if own_fs:  # the WAL gave back what the refused insert took
            assert os.statvfs(home).f_bfree >= free - 8
        # What fits still goes in, and the store is consistent.
        assert store.put_record(b"c" * 32, "commit", b"fits")
        tiny = b"tiny"
        store.put_blob(tiny, hashlib.sha256(tiny).digest())
    with Store.open(home, rehash=True) as store:
        assert store.recovery.clean, store.recovery
        assert [r.id for r in store.records()] == [b"a" * 32, b"c" * 32]
        assert {s for s, _ in store.blobs()} == {SMALL_SHA, hashlib.sha256(b"tiny").digest()}


def no_fill() -> None:
    pass


def fsize_limit(limit: int) -> Callable[[], None]:
    """A real per-process file-size limit: writes past it fail with EFBIG."""

    def fill() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    return fill


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs; needs root, as here)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the EFBIG test runs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True, timeout=30)


def test_a_full_disk_raises_store_error_and_leaves_nothing(tmpfs: Path) -> None:
    full_disk_checks(tmpfs, 2 << 20, no_fill, own_fs=True)


def test_a_file_size_limit_raises_store_error_and_leaves_nothing(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from tests.node.shell.test_store import full_disk_checks, fsize_limit\n"
        "full_disk_checks(Path(sys.argv[1]), 4 << 20, fsize_limit(1 << 20), own_fs=False)\n"
        "print('checked')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "checked"), done.stderr
