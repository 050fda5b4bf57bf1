"""Two real nodes over libp2p on loopback: the round-trip time each measures to the other
(``status``, ``status --json``, the metrics endpoint) and the commit-to-merge histogram."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from node.cli import main
from node.core.protocol import CoreConfig
from node.errors import ConnectionLost
from node.shell.control import call
from node.shell.runner import Endpoints, run_node
from node.shell.service import NodeService
from node.shell.transport import MemoryNetwork, wire
from tests.node.shell.test_service import _commit, _homes, _libp2p, _memory
from tests.node.shell.test_transport_conformance import serve_ping_with

WAIT = 30.0


async def scrape(port: int) -> str:
    """GET /metrics over HTTP, as a Prometheus server would."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.0 200 OK")
    return data.decode()


def sample(text: str, metric: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text, or None if it is absent."""
    for line in text.splitlines():
        m = re.fullmatch(rf"{metric}(?:\{{(.*)\}})? (\S+)", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            return float(m.group(2))
    return None


async def test_rtt_and_merge_latency_in_status_and_metrics(
    tmp_path: Path,
    nursery: trio.Nursery,
    make_adapter: Callable[..., Path],
    distilled: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    homes = _homes(tmp_path, ["alice", "bob"])
    for home in homes:
        config = home.config()
        config.metrics_port = 0  # any free port
        home.save_config(config)
    alice, bob = nodes = [
        NodeService(h, transport=_libp2p(h), core_config=CoreConfig(sync_interval=0.5))
        for h in homes
    ]
    for node in nodes:
        # The short sync interval (fast pings) would also make a ping's timeout half a
        # second, which a loaded 2-core CI machine can exceed between the status calls below:
        # the RTT is then (rightly) forgotten and the test would flake. Timeouts are
        # the subject of the bad-answer test below, not of this one.
        node.rtt.timeout = WAIT
    endpoints: list[Endpoints] = [await nursery.start(run_node, n) for n in nodes]
    await bob.connect(alice.listen_addrs[0])
    alice_id, bob_id = (n.identity.public.peer_id() for n in nodes)

    # Each measures the other within a sync interval or two of connecting.
    with trio.fail_after(WAIT):
        await bob.wait_until(lambda n: n.rtt.of(alice_id) is not None)
        await alice.wait_until(lambda n: n.rtt.of(bob_id) is not None)
    state = await trio.to_thread.run_sync(lambda: call(bob.home.control_path, "status"))
    (peer,) = state["peers"]
    assert peer["name"] == "alice"
    assert isinstance(peer["rtt_ms"], float)
    assert 0 < peer["rtt_ms"] < 1000 * WAIT
    assert isinstance(peer["rtt_smoothed_ms"], float)
    assert peer["rtt_smoothed_ms"] > 0
    assert state["ping_failures"] == 0
    assert state["commit_merge_latency"]["count"] == 0

    capsys.readouterr()
    args = ["status", "--home", str(bob.home.path)]
    assert await trio.to_thread.run_sync(main, args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("alice"))
    assert re.search(r", member, rtt \d+(\.\d+)? ms$", line), line
    assert await trio.to_thread.run_sync(main, [*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["peers"][0]["rtt_ms"] > 0

    text = await scrape(endpoints[1].metrics_port or 0)
    rtt = sample(text, "medforge_peer_rtt_seconds", peer=alice_id, name="alice")
    assert rtt is not None
    assert 0 < rtt < WAIT
    assert sample(text, "medforge_peer_rtt_smoothed_seconds", name="alice") is not None
    assert "# TYPE medforge_commit_merge_latency_seconds histogram" in text
    assert sample(text, "medforge_commit_merge_latency_seconds_count") == 0.0

    # A commit by alice, fetched, judged and folded at bob: one wait on each node.
    commit, blobs = _commit(alice.home, make_adapter("a"), distilled, alice.core.tip, (1.0, 1.0))
    await alice.publish(commit, blobs)
    with trio.fail_after(WAIT):
        for node in nodes:
            await node.wait_until(lambda n: n.merge_latency.snapshot().count == 1)
    for ends in endpoints:
        text = await scrape(ends.metrics_port or 0)
        count = sample(text, "medforge_commit_merge_latency_seconds_count")
        assert count is not None
        assert count >= 1
        total = sample(text, "medforge_commit_merge_latency_seconds_sum")
        assert total is not None
        assert 0 < total < WAIT
        inf = sample(text, "medforge_commit_merge_latency_seconds_bucket", le="+Inf")
        assert inf == count
        assert sample(text, "medforge_commit_merge_latency_seconds_bucket", le="1800.0") == count
    assert await trio.to_thread.run_sync(main, args) == 0
    assert "merged      1 commit(s) since start" in capsys.readouterr().out
    for node in nodes:
        node.stop()


async def _mute(stream: wire.ByteStream) -> None:
    with contextlib.suppress(ConnectionLost):
        while await stream.read(wire.PING_LENGTH):  # read, never answer, until reset
            pass


async def _liar(stream: wire.ByteStream) -> None:
    ping = await wire.read_exactly(stream, wire.PING_LENGTH, WAIT)
    await stream.write(bytes(b ^ 0xFF for b in ping))
    await stream.close()


@pytest.mark.parametrize("server", [_mute, _liar], ids=["silent", "garbage"])
async def test_a_member_that_answers_pings_badly_has_no_rtt_and_stops_nothing(
    tmp_path: Path, nursery: trio.Nursery, server: Callable[[wire.ByteStream], Awaitable[None]]
) -> None:
    network = MemoryNetwork()
    alice, bob = nodes = [
        NodeService(h, transport=_memory(network)(h), core_config=CoreConfig(sync_interval=0.2))
        for h in _homes(tmp_path, ["alice", "bob"])
    ]
    serve_ping_with(bob.transport, server)
    for node in nodes:
        await nursery.start(node.run)
    bob_id = bob.identity.public.peer_id()
    await alice.connect(bob.listen_addrs[0])
    with trio.fail_after(WAIT):
        await alice.wait_until(lambda n: n.rtt.failures >= 1)
    state = alice.status().as_dict()
    assert state["ping_failures"] >= 1
    assert alice.rtt.of(bob_id) is None
    if server is _liar:  # garbage: bob is cut off and banned, as for any other frame
        assert state["frames"]["malformed_frames"] == 1
        assert alice.transport.is_banned(bob_id)
    else:  # silence is no fault: bob stays, only without an RTT
        assert [p["rtt_ms"] for p in state["peers"]] == [None]
        assert bob_id in alice.transport.peers()
    assert not alice.stopped.is_set()
    for node in nodes:
        node.stop()
