"""Concurrent commits on a partitioned network: the loser's author re-searches and supersedes.

Alice and bob both commit against item_0 while apart. When they meet, the order puts one on
the main chain and the other after the tip as an orphan; the orphan's node re-searches its
plugin against the tip with the network's real base model and publishes a commit that
supersedes it. Both nodes end on the same two-item main chain and the same digest.
"""

from __future__ import annotations

from pathlib import Path

import trio

from crypto.records import Genesis, Member
from merge.base_shapes import shapes_of
from merge.pipeline.distill import DistillConfig, distill, save_distilled
from merge.pipeline.train import TrainConfig, train_plugin
from node.core.protocol import CoreConfig
from node.forge.netspec import make_spec
from node.shell.home import Home
from node.shell.service import NodeService
from node.shell.transport import MemoryNetwork, MemoryTransport
from tests.merge.pipeline_fixtures import save_tiny_text, tiny_text_backend, toy_records
from tests.node.shell.test_service import _commit


def _plugin(tmp_path: Path, name: str, seed: int) -> tuple[Path, Path]:
    backend = tiny_text_backend()
    records = toy_records()
    adapter = tmp_path / f"{name}-plugin"
    train_plugin(
        backend, records, task=name, out=adapter, config=TrainConfig.quick(seed=seed, batch_size=8)
    )
    report = distill(backend, records, task=name, config=DistillConfig.quick(ipc=2, seed=seed))
    distilled = tmp_path / f"{name}-distilled.safetensors"
    save_distilled(report.distilled, distilled)
    return adapter, distilled


async def test_the_orphans_author_rebases_and_both_nodes_converge(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    model = save_tiny_text(tmp_path / "tiny-base")
    backend = tiny_text_backend()
    fingerprint = backend.fingerprint
    homes = [Home.init(tmp_path / name, name) for name in ("alice", "bob")]
    genesis = Genesis(
        name="rebase-net",
        members=tuple(Member(h.config().name, h.identity().public) for h in homes),
        threshold=1,
        spec=make_spec("stack", fingerprint, shapes_of(backend), backend="text", model=str(model)),
        nonce="r",
    )
    for home in homes:
        home.join(genesis)
    network = MemoryNetwork()
    config = CoreConfig(sync_interval=0.5, rebase_delay=0.05)
    nodes = [
        NodeService(
            h, transport=MemoryTransport(network, h.identity().private_bytes()), core_config=config
        )
        for h in homes
    ]
    for node in nodes:
        await nursery.start(node.run)
    alice, bob = nodes
    # Apart, both commit against item_0.
    classes = ("fracture", "infection", "tumour")
    ours = [
        _commit(n.home, *_plugin(tmp_path, n.config.name, seed), n.core.tip, (1.0, 1.0), classes)
        for seed, n in enumerate(nodes)
    ]
    for node, (commit, blobs) in zip(nodes, ours, strict=True):
        await node.publish(commit, blobs)
    assert alice.core.order.commits != bob.core.order.commits
    await bob.connect(alice.listen_addrs[0])

    def settled(n: NodeService) -> bool:
        order = n.core.order
        return len(order.main) == 2 and not order.orphans and n.core.digest is not None

    with trio.fail_after(120):
        for node in nodes:
            await node.wait_until(settled)
        await alice.wait_until(lambda n: n.core.digest == bob.core.digest)
    order = alice.core.order
    assert order.commits == bob.core.order.commits
    winner = min(c.id for c, _ in ours)
    loser = max(c.id for c, _ in ours)
    assert order.commits[0] == winner
    rebased = alice.core.commit(order.commits[1])
    assert rebased is not None
    assert rebased.supersedes == loser
    assert rebased.parent == order.items[1]  # searched against the tip it is applied on
    assert rebased.objective["evaluations"] > 0  # a real search ran
    for node in nodes:
        node.stop()
