"""The store's contract: verified content-addressed blobs, an idempotent record index,
one process per home, and recovery that reports what it repaired."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from node.errors import CorruptBlob, StoreLocked
from node.store import Store
from node.transport import MemoryNetwork, MemoryTransport, PeerConnected

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
        "import sys; from pathlib import Path; from node.store import Store\n"
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
    with Store.open(tmp_path, rehash=True) as store:
        assert store.recovery.corrupt_blobs == [sha["c"]]
        assert {s for s, _ in store.blobs()} == {sha["d"], sha["e"], sha["f"], orphan_sha}
        assert not paths["c"].exists()


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
                assert isinstance(await bob.events.receive(), PeerConnected)
                with wanted.blob_writer(SHA, len(DATA)) as writer:
                    await bob.fetch_blob(alice.peer_id, SHA, size=len(DATA), sink=writer)
                    writer.commit()
            alice.stop()
            bob.stop()
        assert wanted.blob_path(SHA) is not None
