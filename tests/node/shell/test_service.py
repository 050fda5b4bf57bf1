"""Real nodes (store on disk, real PEFT adapters, the real core) over both transports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from crypto.records import Commit, Genesis, Member
from node.cli.commit_cmd import commit_blobs
from node.core.protocol import CoreConfig
from node.forge.bundle import blob_ref
from node.forge.netspec import make_spec
from node.shell.control import call
from node.shell.home import Home
from node.shell.runner import run_node
from node.shell.service import NodeService
from node.shell.transport import MemoryNetwork, MemoryTransport, Transport, TransportConfig
from tests.conftest import BASE, TINY_SHAPES

FAST = TransportConfig(request_timeout=10, idle_timeout=5, backoff_min=0.05, backoff_max=0.5)


def _homes(tmp_path: Path, names: list[str], mode: str = "stack") -> list[Home]:
    homes = [Home.init(tmp_path / name, name) for name in names]
    genesis = Genesis(
        name="test-net",
        members=tuple(Member(h.config().name, h.identity().public) for h in homes),
        threshold=1,
        spec=make_spec(mode, BASE, TINY_SHAPES),
        nonce="t",
    )
    for home in homes:
        home.join(genesis)
    return homes


def _commit(
    home: Home,
    adapter: Path,
    distilled: Path,
    parent: bytes,
    coeffs: tuple[float, float],
    classes: tuple[str, ...] = ("a", "b"),
) -> tuple[Commit, dict[bytes, Path]]:
    """Sign a commit over real adapter files, as `medforge commit --coeffs` would."""
    blobs = commit_blobs(adapter, distilled)
    genesis = home.genesis()
    commit = Commit.create(
        home.identity(),
        network=genesis.network_id,
        seq=home.next_seq(),
        task=f"task-{home.config().name}",
        classes=classes,
        base=str(genesis.spec["base"]),
        blobs={k: blob_ref(v) for k, v in blobs.items()},
        parent=parent,
        coeffs=coeffs,
        objective={},
    )
    files = {
        "adapter_config": adapter / "adapter_config.json",
        "adapter_model": adapter / "adapter_model.safetensors",
        "distilled": distilled,
    }
    return commit, {commit.blobs[k].sha256: path for k, path in files.items()}


def _memory(network: MemoryNetwork) -> Callable[[Home], Transport]:
    return lambda home: MemoryTransport(network, home.identity().private_bytes(), FAST)


def _libp2p(home: Home) -> Transport:
    from node.shell.transport.libp2p import Libp2pTransport

    return Libp2pTransport(home.identity().private_bytes(), FAST)


@pytest.fixture(params=["memory", "libp2p"])
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[list[NodeService]]:
    make = _memory(MemoryNetwork()) if request.param == "memory" else _libp2p
    homes = _homes(tmp_path, ["alice", "bob", "carol"])
    nodes = [
        NodeService(h, transport=make(h), core_config=CoreConfig(sync_interval=1.0)) for h in homes
    ]
    for node in nodes:
        await nursery.start(run_node, node)
    # A line: alice - bob - carol. carol only hears alice's commit through bob.
    await nodes[1].connect(nodes[0].listen_addrs[0])
    await nodes[2].connect(nodes[1].listen_addrs[0])
    yield nodes
    for node in nodes:
        node.stop()


def _same_composite(nodes: list[NodeService], forge_item: int) -> Callable[[NodeService], bool]:
    def done(node: NodeService) -> bool:
        return (
            len(node.core.order.commits) == forge_item
            and node.core.digest is not None
            and node.core.convergence().same_composite == len(node.transport.peers())
        )

    return done


async def test_commits_from_two_institutions_reach_every_node(
    cluster: list[NodeService], make_adapter: Callable[..., Path], distilled: Path
) -> None:
    alice, bob, carol = cluster
    first, blobs = _commit(
        alice.home, make_adapter("a", seed=1), distilled, alice.core.tip, (1.0, 1.0)
    )
    await alice.publish(first, blobs)
    with trio.fail_after(30):
        await bob.wait_until(lambda n: n.core.order.commits == (first.id,))
    second, blobs = _commit(
        bob.home, make_adapter("b", seed=2, rank=3), distilled, bob.core.tip, (0.5, 0.75)
    )
    await bob.publish(second, blobs)
    with trio.fail_after(30):
        for node in cluster:
            await node.wait_until(_same_composite(cluster, 2))
    digests = {node.core.digest for node in cluster}
    assert len(digests) == 1
    assert {node.core.root for node in cluster} == {alice.core.root}
    assert alice.core.order.commits == (first.id, second.id)
    # The composite is folded from blobs each node fetched and stored itself.
    for node in cluster:
        assert node.store.has_blob(second.blobs["adapter_model"].sha256)


async def test_status_and_log_over_the_control_socket(
    cluster: list[NodeService], make_adapter: Callable[..., Path], distilled: Path
) -> None:
    alice = cluster[0]
    commit, blobs = _commit(alice.home, make_adapter("a"), distilled, alice.core.tip, (1.0, 1.0))
    await alice.publish(commit, blobs)
    with trio.fail_after(30):
        await alice.wait_until(lambda n: n.core.digest is not None and n.core.order.commits != ())
    path = alice.home.control_path
    status = await trio.to_thread.run_sync(lambda: call(path, "status"))
    assert status["forge_item"] == 1
    assert status["composite_digest"] == alice.core.digest
    log = await trio.to_thread.run_sync(lambda: call(path, "log"))
    assert [(e["author"], e["task"], e["coeffs"]) for e in log] == [
        ("alice", "task-alice", [1.0, 1.0])
    ]


async def test_prometheus_metrics_on_a_loopback_port(tmp_path: Path, nursery: trio.Nursery) -> None:
    (home,) = _homes(tmp_path, ["alice"])
    config = home.config()
    config.metrics_port = 0  # any free port
    home.save_config(config)
    node = NodeService(home, transport=_memory(MemoryNetwork())(home))
    endpoints = await nursery.start(run_node, node)
    assert endpoints.metrics_port
    stream = await trio.open_tcp_stream("127.0.0.1", endpoints.metrics_port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.0 200 OK")
    assert b"\nmedforge_records 0.0\n" in data
    assert b"# TYPE medforge_garbage_total counter" in data
    node.stop()


async def test_export_writes_the_composite_as_a_peft_adapter(
    tmp_path: Path, nursery: trio.Nursery, make_adapter: Callable[..., Path], distilled: Path
) -> None:
    from merge.digest import composite_digest
    from merge.fold import apply, empty
    from merge.lora import load_adapter
    from merge.spec import Limits

    (home,) = _homes(tmp_path, ["alice"])
    node = NodeService(home, transport=_memory(MemoryNetwork())(home))
    await nursery.start(run_node, node)
    commit, blobs = _commit(home, make_adapter("a"), distilled, node.core.tip, (1.0, 0.5))
    await node.publish(commit, blobs)
    with trio.fail_after(30):
        await node.wait_until(lambda n: n.core.digest is not None and n.core.order.commits != ())
    out = tmp_path / "export"
    result = await trio.to_thread.run_sync(lambda: call(home.control_path, "export", out=str(out)))
    assert result["digest"] == node.core.digest
    exported = load_adapter(out, base=BASE, limits=Limits())
    expected = apply(
        empty("stack"), load_adapter(tmp_path / "a", base=BASE, limits=Limits()), (1.0, 0.5)
    )
    # Stack exports scale 1 factors: the same tensors, so the same digest.
    assert composite_digest(apply(empty("stack"), exported, (1.0, 1.0))) == composite_digest(
        expected
    )
    node.stop()


async def test_a_published_revocation_takes_the_commit_out_of_the_order(
    tmp_path: Path, nursery: trio.Nursery, make_adapter: Callable[..., Path], distilled: Path
) -> None:
    from crypto.records import Revocation
    from node.cli import main

    (home,) = _homes(tmp_path, ["alice"])
    node = NodeService(home, transport=_memory(MemoryNetwork())(home))
    await nursery.start(run_node, node)
    commit, blobs = _commit(home, make_adapter("a"), distilled, node.core.tip, (1.0, 1.0))
    await node.publish(commit, blobs)
    with trio.fail_after(30):
        await node.wait_until(lambda n: n.core.order.commits == (commit.id,))
    revocation = Revocation.of_commit(home.genesis().network_id, commit.id)
    path = tmp_path / "revoke.cbor"
    path.write_bytes(revocation.signed_by(home.identity()).encode())
    code = await trio.to_thread.run_sync(main, ["publish", "--home", str(home.path), str(path)])
    assert code == 0
    with trio.fail_after(30):
        await node.wait_until(lambda n: n.core.order.commits == ())
    node.stop()


async def test_a_fold_that_fails_leaves_the_node_serving_its_last_composite(
    tmp_path: Path, nursery: trio.Nursery, make_adapter: Callable[..., Path], distilled: Path
) -> None:
    """A blob gone from disk under a complete commit (a disk fault, not content) makes the
    next refold fail: the node stays up, keeps its composite and says why."""
    from crypto.records import Revocation
    from node.shell.metrics import render

    (home,) = _homes(tmp_path, ["alice"])
    node = NodeService(home, transport=_memory(MemoryNetwork())(home))
    await nursery.start(run_node, node)
    first, blobs = _commit(home, make_adapter("a"), distilled, node.core.tip, (1.0, 1.0))
    await node.publish(first, blobs)
    second, blobs = _commit(home, make_adapter("b", seed=2), distilled, node.core.tip, (0.5, 1.0))
    await node.publish(second, blobs)
    with trio.fail_after(30):
        await node.wait_until(lambda n: n.core.digest is not None and len(n.core.order.main) == 2)
    serving = node.composer.digest
    node.store.blob_path(first.blobs["adapter_model"].sha256).unlink()  # type: ignore[union-attr]
    node.composer._adapters.clear()  # as after a restart: adapters are read from disk again
    revocation = Revocation.of_commit(home.genesis().network_id, second.id)
    await node.publish(revocation.signed_by(home.identity()))  # the order shrinks: a refold
    with trio.fail_after(30):
        await node.wait_until(lambda n: n.merge_error is not None)
    state = node.status().as_dict()
    assert not node.stopped.is_set()
    assert state["serving_digest"] == serving
    assert state["composite_digest"] is None  # no digest is claimed for the new order
    assert first.id.hex()[:12] in state["merge_error"]
    assert state["faults"]["merge"] == 1
    assert b"medforge_merge_failing 1.0" in render(node.status)
    node.stop()


async def test_a_refused_local_commit_says_why_at_once(
    tmp_path: Path, nursery: trio.Nursery, make_adapter: Callable[..., Path], distilled: Path
) -> None:
    """A manual `--supersedes` of a commit on the main chain is a stale rebase: the caller
    hears the reason, not a time-out; publishing a commit already held returns at once."""
    from dataclasses import replace

    from node.errors import NodeError

    (home,) = _homes(tmp_path, ["alice"])
    node = NodeService(home, transport=_memory(MemoryNetwork())(home))
    await nursery.start(run_node, node)
    first, blobs = _commit(home, make_adapter("a"), distilled, node.core.tip, (1.0, 1.0))
    await node.publish(first, blobs)
    with trio.fail_after(10):
        await node.publish(first, blobs)  # again: already held
    stale, blobs = _commit(home, make_adapter("b", seed=2), distilled, node.core.tip, (1.0, 1.0))
    stale = replace(stale, supersedes=first.id, sigs=()).signed_by(home.identity())
    with trio.fail_after(10), pytest.raises(NodeError, match="stale rebase"):
        await node.publish(stale, blobs)
    node.stop()


async def test_an_empty_network_reports_one_digest_and_convergence(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    from merge.digest import composite_digest
    from merge.fold import empty

    network = MemoryNetwork()
    homes = _homes(tmp_path, ["alice", "bob"])
    nodes = [
        NodeService(h, transport=_memory(network)(h), core_config=CoreConfig(sync_interval=1.0))
        for h in homes
    ]
    for node in nodes:
        await nursery.start(run_node, node)
    await nodes[1].connect(nodes[0].listen_addrs[0])
    with trio.fail_after(30):
        for node in nodes:
            await node.wait_until(lambda n: n.core.convergence().same_composite == 1)
    state = nodes[0].status().as_dict()
    assert state["composite_digest"] == composite_digest(empty("stack"))
    assert state["converged_with"] == 1
    assert [p["same_composite"] for p in state["peers"]] == [True]
    for node in nodes:
        node.stop()
