"""A node heals its own store from its peers, and never serves a blob that rotted.

Real `medforge node run` processes on loopback (threshold-1 network, TinyBase adapters):

- bob's copy of a blob is deleted, truncated or bit-flipped (same size) while bob is down:
  bob comes back up, notices (recovery's size check at open, or re-judging the commit's
  blobs), fetches the blob from alice again and reaches the same digest;
- alice's copy rots while alice runs, before she first serves it: `medforge store check`
  sees it beside the running node (read-only; --repair is refused), a late joiner fetching
  from alice is refused the blob rather than sent bad bytes (so it never bans alice), gets
  it from carol instead, and alice, restarted, fetches it back too.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from node.shell.home import Home
from tests.conftest import write_distilled
from tests.node.procs import ROOT, commit_cli, same_digest, start, stop, until

pytestmark = pytest.mark.slow


def biggest_blob(home: Home) -> tuple[bytes, Path]:
    """The largest blob file in a home's store (the adapter's weights) and its sha256."""
    files = [p for p in (home.store_path / "blobs").glob("*/*") if not p.name.startswith(".")]
    path = max(files, key=lambda p: p.stat().st_size)
    return bytes.fromhex(path.parent.name + path.name), path


def flip_bit(path: Path) -> None:
    """Rot: one bit in the middle, same size, same mtime."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def store_check(home: Home, *flags: str) -> tuple[int, dict[str, Any] | None, str]:
    """`medforge store check --json` in its own process, as an operator would run it."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            "store",
            "check",
            "--home",
            str(home.path),
            "--json",
            *flags,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None, done.stderr


DAMAGE: dict[str, Callable[[Path], None]] = {
    "deleted": lambda path: path.unlink(),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:-100]),
    "bit flip": flip_bit,
}
# What bob's log says about it: recovery's size check at open, or the re-judged commit.
NOTICED = {
    "deleted": "recovered: 1 missing ({short})",
    "truncated": "recovered: 1 corrupt ({short})",
    "bit flip": "stored blob {short} is damaged; fetching it again",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_a_damaged_blob_is_fetched_again_after_a_restart(
    damage: str,
    homes: list[Home],
    tmp_path: Path,
    make_adapter: Callable[..., Path],
) -> None:
    alice, bob = homes[:2]
    a = start(alice, [])
    b = start(bob, [a.addr])
    assert (
        commit_cli(
            alice,
            make_adapter("a1", seed=1),
            write_distilled(tmp_path / "d.safetensors"),
            tmp_path / "c1",
            "1",
            "1",
        )
        == 0
    )
    await until(lambda: same_digest([a, b], 1), "the commit reached bob")
    digest = a.status()["composite_digest"]
    stop([b])

    sha, path = biggest_blob(bob)
    good = path.read_bytes()
    assert hashlib.sha256(good).digest() == sha
    DAMAGE[damage](path)

    b = start(bob, [a.addr])
    await until(lambda: same_digest([a, b], 1), "bob fetched the blob again")
    assert b.status()["composite_digest"] == digest
    recovered = {"deleted": "missing_blobs", "truncated": "corrupt_blobs"}.get(damage)
    if recovered is not None:  # found by the store's check at open: status says so
        assert b.status()["store_recovery"][recovered] == 1
    assert b.status()["frames"]["bans"] == 0
    assert a.status()["frames"]["bans"] == 0
    assert path.read_bytes() == good
    bob_log = stop([b])[0]
    assert NOTICED[damage].format(short=sha.hex()[:12]) in bob_log
    code, report, err = store_check(bob)
    assert (code, err) == (0, "")
    assert report is not None
    assert report["clean"]
    assert report["unheld"] == []
    stop([a])


async def test_a_blob_that_rots_is_never_served(
    homes: list[Home], tmp_path: Path, make_adapter: Callable[..., Path]
) -> None:
    alice, bob, carol = homes[:3]
    c = start(carol, [])
    a = start(alice, [c.addr])
    # Carol authors (her blobs are her own files); alice fetches them and has served none.
    assert (
        commit_cli(
            carol,
            make_adapter("carol-adapter", seed=1),
            write_distilled(tmp_path / "d.safetensors"),
            tmp_path / "c1",
            "1",
            "1",
        )
        == 0
    )
    await until(lambda: same_digest([a, c], 1), "the commit reached alice")
    digest = a.status()["composite_digest"]
    stop([c])  # for now, alice is the only holder

    sha, path = biggest_blob(alice)
    flip_bit(path)  # while alice runs

    # The operator's check sees it beside the running node, and only reads.
    code, report, err = store_check(alice)
    assert code == 1, err
    assert report is not None
    assert report["live"] is True
    assert report["corrupt"] == [sha.hex()]
    assert path.exists()
    code, report, err = store_check(alice, "--repair")
    assert code == 2
    assert report is not None
    assert report["error"]["kind"] == "StoreLocked"
    assert err.startswith("error: StoreLocked: a node is running on"), err

    # Bob joins late, from a fresh home, and can only ask alice: she refuses, never sends.
    b = start(bob, [a.addr])
    await until(
        lambda: f"stored blob {sha.hex()} is damaged" in a.log.read_text(),
        "alice checked the blob before serving it",
    )
    await until(
        lambda: b.status()["records"] == 0 and b.status()["missing_blobs"] == 1,
        "bob holds every blob but the rotten one",
    )
    for _ in range(20):  # bob keeps asking for a while; alice keeps refusing
        await trio.sleep(0.1)
        state = b.status()
        assert state["frames"]["bans"] == 0
        assert state["frames"]["blob_mismatches"] == 0
        assert state["forge_item"] == 0
    assert not (bob.store_path / "blobs" / sha.hex()[:2] / sha.hex()[2:]).exists()

    # Alice no longer lists the blob; the check says which stored commit lacks it.
    code, report, err = store_check(alice)
    assert (code, err) == (0, "")
    assert report is not None
    assert report["corrupt"] == []
    assert report["unheld"] == [sha.hex()]

    # Carol, who kept a good copy, comes back: bob gets the blob from her.
    c = start(carol, [a.addr, b.addr])
    await until(lambda: same_digest([b, c], 1), "bob fetched the blob from carol")
    assert b.status()["composite_digest"] == digest
    assert b.status()["frames"]["bans"] == 0
    assert c.status()["frames"]["bans"] == 0

    # Alice, restarted, fetches her lost blob back from a peer.
    stop([a])
    a = start(alice, [c.addr, b.addr])
    await until(lambda: same_digest([a, b, c], 1), "alice fetched the blob back")
    assert a.status()["composite_digest"] == digest
    assert hashlib.sha256(path.read_bytes()).digest() == sha
    stop([a, b, c])
    code, report, _ = store_check(alice)
    assert code == 0
    assert report is not None
    assert report["clean"]
    assert report["unheld"] == []
