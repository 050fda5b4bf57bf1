"""The node under stress: restarts, garbage from a peer, a second node on one home, SIGTERM."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest.mock import ANY

import pytest
import trio

from node.core.protocol import CoreConfig
from node.errors import StoreLocked, TransportError
from node.forge.validate import VALIDITY
from node.shell.service import NodeService
from node.shell.store import Store, Verification
from node.shell.transport.libp2p import Libp2pTransport
from tests.node.shell.test_service import FAST, _commit, _homes

FAST_CORE = CoreConfig(sync_interval=0.5)


def _node(home: object) -> NodeService:
    from node.shell.home import Home

    assert isinstance(home, Home)
    return NodeService(
        home,
        transport=Libp2pTransport(home.identity().private_bytes(), FAST),
        core_config=FAST_CORE,
    )


async def test_a_node_stopped_during_commits_catches_up_after_restart(
    tmp_path: Path, nursery: trio.Nursery, make_adapter: Callable[..., Path], distilled: Path
) -> None:
    alice_home, bob_home = _homes(tmp_path, ["alice", "bob"])
    alice, bob = _node(alice_home), _node(bob_home)
    await nursery.start(alice.run)
    await nursery.start(bob.run)
    await bob.connect(alice.listen_addrs[0])
    first, blobs = _commit(
        alice_home, make_adapter("a1", seed=1), distilled, alice.core.tip, (1.0, 1.0)
    )
    await alice.publish(first, blobs)
    with trio.fail_after(30):
        await bob.wait_until(lambda n: n.core.digest is not None and len(n.core.order.commits) == 1)
    bob.stop()  # bob goes down; alice keeps committing
    with trio.fail_after(10):
        await bob.stopped.wait()
    second, blobs = _commit(
        alice_home, make_adapter("a2", seed=2), distilled, alice.core.tip, (0.5, 1.25)
    )
    await alice.publish(second, blobs)
    with trio.fail_after(30):
        await alice.wait_until(
            lambda n: n.core.digest is not None and len(n.core.order.commits) == 2
        )
    # bob restarts from his store (one commit) and catches up by anti-entropy alone.
    bob = _node(bob_home)
    assert len(bob.store.records()) == 1  # what bob had accepted survived the stop
    await nursery.start(bob.run)
    await bob.connect(alice.listen_addrs[0])
    with trio.fail_after(30):
        await bob.wait_until(lambda n: n.core.digest == alice.core.digest)
    assert bob.core.order.commits == alice.core.order.commits == (first.id, second.id)
    # The commit bob had judged valid is believed (its bytes checked again, not its content);
    # the one he had not seen is judged whole.
    assert bob.rejudged == {"trusted": 1, "checked": 1}
    for node in (alice, bob):
        node.stop()


async def test_a_verdict_of_another_validity_function_is_judged_again(
    tmp_path: Path, nursery: trio.Nursery, make_adapter: Callable[..., Path], distilled: Path
) -> None:
    """A restarted node believes only verdicts its own validity function reached: one kept
    under another version (an upgrade that judges differently) is judged whole again."""
    (home,) = _homes(tmp_path, ["alice"])
    alice = _node(home)
    await nursery.start(alice.run)
    commit, blobs = _commit(home, make_adapter("a1", seed=1), distilled, alice.core.tip, (1.0, 1.0))
    await alice.publish(commit, blobs)
    with trio.fail_after(30):
        await alice.wait_until(lambda n: n.core.digest is not None and n.core.order.commits)
    digest = alice.core.digest
    alice.stop()
    with trio.fail_after(10):
        await alice.stopped.wait()
    record_id = hashlib.sha256(commit.encode()).digest()
    stale = Store.open(home.path)
    assert stale.verification(record_id) == Verification(record_id, True, VALIDITY, ANY)
    stale.set_verification(record_id, True, "medforge-validity/0")
    stale.close()
    alice = _node(home)
    await nursery.start(alice.run)
    with trio.fail_after(30):
        await alice.wait_until(lambda n: n.core.digest == digest)
    assert alice.rejudged == {"trusted": 0, "checked": 1}
    alice.stop()


async def test_a_peer_sending_garbage_is_disconnected_and_counted(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    (alice_home,) = _homes(tmp_path, ["alice"])
    alice = _node(alice_home)
    await nursery.start(alice.run)
    mallory = Libp2pTransport(os.urandom(32), FAST)
    await nursery.start(mallory.run)
    peer = await mallory.connect(alice.listen_addrs[0])
    # alice may cut the stream before mallory reads its end: either outcome is fine.
    with contextlib.suppress(TransportError):
        await mallory.request(peer, b"\xff\x00 not a message", max_response=16)
    with trio.fail_after(10):
        await alice.wait_until(lambda n: n.core.statistics().garbage == 1)
    with trio.fail_after(10):
        await alice.wait_until(lambda n: not n.transport.peers())
    assert (
        "malformed" in " ".join(reason for _, _, reason in alice.core.errors).lower()
        or alice.core.errors
    )
    assert alice.core.statistics().complete == 0  # nothing stored
    mallory.stop()
    alice.stop()


def test_a_second_node_on_the_same_home_refuses_to_start(tmp_path: Path) -> None:
    (home,) = _homes(tmp_path, ["alice"])
    first = NodeService(home)
    try:
        with pytest.raises(StoreLocked):
            NodeService(home)
    finally:
        first.store.close()


@pytest.mark.slow
def test_sigterm_stops_the_node_cleanly(tmp_path: Path) -> None:
    (home,) = _homes(tmp_path, ["alice"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "node", "run", "--home", str(home.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready"
        assert home.control_path.exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.stderr.close()
    assert not home.control_path.exists()
    assert "Traceback" not in stderr
    assert "ResourceWarning" not in stderr


@pytest.mark.slow
def test_node_stop_ends_the_process(tmp_path: Path) -> None:
    from node.cli import main as cli

    (home,) = _homes(tmp_path, ["alice"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "node", "run", "--home", str(home.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        assert cli(["node", "stop", "--home", str(home.path)]) == 0
        assert proc.wait(timeout=30) == 0  # it used to close its listener and stay forever
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_bootstrap_address_without_a_peer_id_is_a_clear_error(tmp_path: Path) -> None:
    from node.cli import main as cli

    (home,) = _homes(tmp_path, ["alice"])
    config = home.config()
    config.bootstrap = ["/ip4/127.0.0.1/tcp/4001"]
    home.save_config(config)
    assert cli(["node", "run", "--home", str(home.path)]) == 2


@pytest.mark.slow
def test_a_second_node_on_a_port_in_use_refuses_to_start(tmp_path: Path) -> None:
    import socket

    from node.cli import main as cli

    alice, bob = _homes(tmp_path, ["alice", "bob"])
    with socket.socket() as s:  # a free port, for alice to take
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for home in (alice, bob):
        config = home.config()
        config.listen = f"/ip4/127.0.0.1/tcp/{port}"
        home.save_config(config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "node", "run", "--home", str(alice.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        assert cli(["node", "run", "--home", str(bob.path)]) == 2  # PortInUse, one line
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None
        proc.stdout.close()
    # Once alice is gone, the port is free again (a restart is not refused).
    from node.shell.transport.libp2p import ensure_port_free

    ensure_port_free(f"/ip4/127.0.0.1/tcp/{port}")
