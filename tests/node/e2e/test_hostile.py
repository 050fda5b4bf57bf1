"""Issue 16 over real `medforge node run` processes: a fresh member catching up bans nobody,
a stranger's flood changes nothing, an equivocating member is shown and excluded, and a
frozen peer is reported silent although its socket stays open."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from crypto.identity import Identity
from crypto.records import BlobRef, Commit
from node.core import messages
from node.core.order import root_item
from node.errors import TransportError
from node.shell.home import Home
from node.shell.transport.libp2p import Libp2pTransport
from tests.conftest import BASE, write_distilled
from tests.node.e2e.test_invalid_commits import sign
from tests.node.procs import ROOT, commit_cli, same_digest, start_line, stop, until
from tests.node.shell.test_service import FAST

pytestmark = pytest.mark.slow


def test_a_fresh_member_catches_up_on_many_commits_with_zero_bans(tmp_path: Path) -> None:
    """The benchmark itself, small: 60 commits in alice's store, bob pulls them all."""
    out = subprocess.run(
        [
            sys.executable,
            "scripts/bench_catchup.py",
            "--commits",
            "60",
            "--json",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["same_digest"]
    assert report["bans"] == {"bob": 0, "alice": 0}
    assert report["garbage"] == {"bob": 0, "alice": 0}
    assert (tmp_path / "catchup.png").stat().st_size > 0


def _spam(network: bytes, k: int) -> bytes:
    who = Identity.from_seed(k.to_bytes(32, "big"))  # a key the roster never named
    ref = BlobRef(os.urandom(32), 1000)
    return Commit.create(
        who,
        network=network,
        seq=k,
        task="spam",
        classes=("a", "b"),
        base=BASE,
        blobs={"adapter_config": ref, "adapter_model": ref, "distilled": ref},
        parent=root_item(network),
        coeffs=(1.0, 1.0),
        objective={},
    ).encode()


async def test_a_strangers_flood_changes_nothing_and_members_still_replicate(
    homes: list[Home], tmp_path: Path, make_adapter: Callable[..., Path]
) -> None:
    alice, bob = homes[0], homes[1]
    distilled = write_distilled(tmp_path / "distilled.safetensors")
    nodes = start_line([alice, bob])
    try:
        network = alice.genesis().network_id
        stranger = Libp2pTransport(os.urandom(32), FAST)

        async def ignore(peer: str, payload: bytes) -> bytes:
            return b""

        stranger.set_request_handler(ignore)
        async with trio.open_nursery() as nursery:
            await nursery.start(stranger.run)
            peer = await stranger.connect(nodes[0].addr)
            spam = tuple(_spam(network, k) for k in range(30))
            for _ in range(20):
                ids = tuple(os.urandom(32) for _ in range(1000))
                await stranger.request(
                    peer, messages.encode(messages.Ids(4, (), ids)), max_response=16
                )
                await stranger.request(
                    peer, messages.encode(messages.Records(spam)), max_response=16
                )
            # Members replicate as ever while the stranger is connected.
            assert (
                await trio.to_thread.run_sync(
                    commit_cli,
                    alice,
                    make_adapter("p", seed=1),
                    distilled,
                    tmp_path / "c1",
                    "1",
                    "1",
                )
                == 0
            )
            await until(lambda: same_digest(nodes, 1), "the commit reached bob")
            state = nodes[0].status()
            stranger.stop()
        assert state["strangers"] == 20  # every record batch ignored, none decoded as ours
        assert state["records"] == 1
        assert state["pending_records"] == 0
        assert state["frames"]["bans"] == 0  # well-formed messages: nothing to punish
        assert [p["member"] for p in state["peers"] if p["peer_id"] == stranger.peer_id] == [False]
    finally:
        stop(nodes)


async def test_an_equivocating_member_is_shown_and_both_commits_are_out(
    homes: list[Home], tmp_path: Path, make_adapter: Callable[..., Path]
) -> None:
    alice, mallory = homes[0], homes[3]
    nodes = start_line([alice])
    try:
        common = {
            "adapter_config": (make_adapter("m1") / "adapter_config.json").read_bytes(),
            "distilled": write_distilled(tmp_path / "d.safetensors").read_bytes(),
        }
        parent = root_item(alice.genesis().network_id)
        twins, files = [], {}
        for seed in (1, 2):  # one seq, two commits
            weights = make_adapter(f"m{seed}", seed=seed) / "adapter_model.safetensors"
            blobs = {**common, "adapter_model": weights.read_bytes()}
            twin = sign(mallory, 7, parent, blobs, (1.0, 1.0))
            twins.append(twin)
            for kind, ref in twin.blobs.items():
                path = tmp_path / "blobs" / ref.sha256.hex()
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(blobs[kind])
                files[ref.sha256] = path
        hostile = Libp2pTransport(mallory.identity().private_bytes(), FAST)
        hostile.set_blob_provider(files.get)

        async def ignore(peer: str, payload: bytes) -> bytes:
            return b""

        hostile.set_request_handler(ignore)
        async with trio.open_nursery() as nursery:
            await nursery.start(hostile.run)
            peer = await hostile.connect(nodes[0].addr)
            for twin in twins:
                await hostile.request(
                    peer, messages.encode(messages.Records((twin.encode(),))), max_response=16
                )
            await until(lambda: nodes[0].status()["records"] == 2, "both twins held")
            hostile.stop()
        state = nodes[0].status()
        assert state["equivocators"] == ["mallory"]
        assert sorted(e["commit"] for e in state["excluded"]) == sorted(t.id.hex() for t in twins)
        assert {e["why"] for e in state["excluded"]} == {"equivocation"}
        assert state["forge_item"] == 0
        from node.cli import main as cli

        assert cli(["log", "--home", str(alice.path)]) == 0
    finally:
        stop(nodes)


async def test_a_frozen_peer_is_reported_silent_while_its_socket_stays_open(
    homes: list[Home],
) -> None:
    nodes = start_line(homes[:2])
    try:

        def live(k: int) -> list[bool]:
            return [p["live"] for p in nodes[k].status()["peers"]]

        await until(lambda: live(0) == [True], "alice hears from bob")
        os.kill(nodes[1].proc.pid, signal.SIGSTOP)  # bob freezes: TCP stays up
        try:
            await until(lambda: live(0) == [False], "alice reports bob silent")
            state = nodes[0].status()
            assert state["peers_connected"] == 1
            assert state["peers_live"] == 0
        finally:
            os.kill(nodes[1].proc.pid, signal.SIGCONT)
        await until(lambda: live(0) == [True], "bob is heard from again")
    finally:
        stop(nodes)


async def test_no_byte_sequence_a_peer_sends_stops_a_node(
    homes: list[Home], tmp_path: Path, make_adapter: Callable[..., Path]
) -> None:
    """Mallory (a member: her records get furthest) sends mutations of well-formed messages
    and raw noise; the node stays up, and a good commit still goes through afterwards."""
    import random

    alice, mallory = homes[0], homes[3]
    distilled = write_distilled(tmp_path / "distilled.safetensors")
    nodes = start_line([alice])
    rng = random.Random(7)
    try:
        blobs = {
            "adapter_config": (make_adapter("m") / "adapter_config.json").read_bytes(),
            "adapter_model": (make_adapter("m") / "adapter_model.safetensors").read_bytes(),
            "distilled": distilled.read_bytes(),
        }
        record = sign(mallory, 0, root_item(alice.genesis().network_id), blobs, (1.0, 1.0))
        seeds = [
            messages.encode(messages.Records((record.encode(),))),
            messages.encode(messages.Ids(4, (1, 2), (os.urandom(32),))),
        ]
        hostile = Libp2pTransport(mallory.identity().private_bytes(), FAST)

        async def ignore(peer: str, payload: bytes) -> bytes:
            return b""

        hostile.set_request_handler(ignore)
        async with trio.open_nursery() as nursery:
            await nursery.start(hostile.run)
            sent = 0
            for k in range(150):
                if k % 10 == 9:
                    data = os.urandom(rng.randrange(1, 2000))
                else:
                    data = bytearray(rng.choice(seeds))
                    for _ in range(rng.randrange(1, 4)):
                        data[rng.randrange(len(data))] = rng.randrange(256)
                    data = bytes(data[: rng.randrange(1, len(data) + 1)])
                try:  # alice disconnects (and may ban) a sender of garbage: dial again
                    with trio.fail_after(5):
                        peer = await hostile.connect(nodes[0].addr)
                        await hostile.request(peer, data, max_response=16)
                    sent += 1
                except (TransportError, trio.TooSlowError):
                    with contextlib.suppress(TransportError):  # forget the dropped connection
                        await hostile.disconnect(alice.identity().public.peer_id())
            hostile.stop()
        assert sent > 0
        assert nodes[0].proc.poll() is None, "the node died"
        state = nodes[0].status()
        assert state["garbage"] >= 1
        assert state["merge_error"] is None
        assert (
            commit_cli(alice, make_adapter("good", seed=3), distilled, tmp_path / "c", "1", "1")
            == 0
        )
        await until(lambda: nodes[0].status()["forge_item"] == 1, "a good commit after all that")
    finally:
        stop(nodes)
