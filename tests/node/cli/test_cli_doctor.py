"""`medforge doctor` on real homes: real files, real sockets, a real node; no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crypto.records import Genesis, Member
from node.cli import main
from node.forge.netspec import make_spec
from node.shell.home import Config, Home
from node.shell.store import Store
from tests.conftest import BASE, TINY_SHAPES
from tests.node import procs
from tests.node.conftest import make_homes

ROOT = Path(__file__).resolve().parents[3]


def doctor(home: Home, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main(["doctor", "--home", str(home.path), "--json", "--dial-timeout", "2", *extra])
    return code, json.loads(capsys.readouterr().out)


def levels(report: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for check in report["checks"]:
        found.setdefault(check["name"], []).append(check["level"])
    return found


def detail(report: dict[str, Any], name: str) -> str:
    return " | ".join(c["detail"] for c in report["checks"] if c["name"] == name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port another process (this test) holds: a peer that accepts, or a busy port."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(4)
        yield held


def configure(home: Home, **changes: Any) -> None:
    config = home.config()
    for key, value in changes.items():
        setattr(config, key, value)
    home.save_config(config)


@pytest.fixture
def alice_bob(tmp_path: Path) -> tuple[Home, Home]:
    alice, bob = make_homes(tmp_path, ["alice", "bob"])
    with Store.open(alice.path) as store:  # a store with one blob, as after a first run
        store.put_blob(b"a blob", hashlib.sha256(b"a blob").digest())
    return alice, bob


def test_a_good_home_passes_every_check_that_applies(
    alice_bob: tuple[Home, Home], capsys: pytest.CaptureFixture[str]
) -> None:
    alice, bob = alice_bob
    peer = procs.start(bob, [])  # a real libp2p node to bootstrap to
    configure(alice, listen=f"/ip4/0.0.0.0/tcp/{free_port()}", bootstrap=[peer.addr])
    try:
        code, report = doctor(alice, "--no-model", capsys=capsys)
    finally:
        procs.stop([peer])
    assert code == 0, report
    assert report["ok"] is True
    assert report["failed"] == 0
    found = levels(report)
    for name in ("home", "identity", "config", "listen", "bootstrap", "genesis", "roster"):
        assert found[name] == ["ok"], (name, report)
    assert "a libp2p node, Noise accepted" in detail(report, "bootstrap")
    assert found["store"] == ["ok"]
    assert "1 blobs" in detail(report, "store")
    assert found["base model"] == ["skip"]  # --no-model: present, fingerprint not checked
    assert found["disk"] in (["ok"], ["warn"])  # the test machine's disk, not the home's fault
    assert found["node"] == ["warn"]  # no node running: a warning, not a failure
    assert "relay" not in found  # none configured
    assert "member 'alice'" in detail(report, "roster")


def test_a_key_readable_by_others_fails(
    alice_bob: tuple[Home, Home], capsys: pytest.CaptureFixture[str]
) -> None:
    alice, _ = alice_bob
    os.chmod(alice.identity_path, 0o644)
    code = main(["doctor", "--home", str(alice.path), "--no-model"])
    out = capsys.readouterr().out
    assert code == 1
    line = next(x for x in out.splitlines() if x.startswith("FAIL  identity"))
    assert "mode 0644" in line
    assert f"chmod 600 {alice.identity_path}" in out
    assert out.splitlines()[-1].startswith("1 failed")


def test_bootstrap_addresses_without_a_peer_id_or_unreachable_are_reported(
    alice_bob: tuple[Home, Home], capsys: pytest.CaptureFixture[str]
) -> None:
    alice, bob = alice_bob
    bob_peer = bob.identity().public.peer_id()
    closed = free_port()  # nobody listens there
    no_peer = "/ip4/127.0.0.1/tcp/4001"
    unreachable = f"/ip4/127.0.0.1/tcp/{closed}/p2p/{bob_peer}"
    alice.save_config(Config(name="alice", bootstrap=[no_peer, unreachable, "/garbage"]))
    code, report = doctor(alice, "--no-model", capsys=capsys)
    assert code == 1
    found = levels(report)
    assert found["config"] == ["fail"]  # Home.config() refuses a bootstrap without /p2p/
    assert sorted(found["bootstrap"]) == ["fail", "fail", "warn"]
    text = detail(report, "bootstrap")
    assert f"{no_peer} lacks /p2p/<peer id>" in text
    assert f"{unreachable}: unreachable" in text
    assert "'/garbage' is not a multiaddr" in text


def test_an_unreachable_peer_alone_is_a_warning(
    alice_bob: tuple[Home, Home], capsys: pytest.CaptureFixture[str]
) -> None:
    alice, bob = alice_bob
    addr = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{bob.identity().public.peer_id()}"
    configure(alice, bootstrap=[addr])
    code, report = doctor(alice, "--no-model", capsys=capsys)
    assert code == 0
    assert levels(report)["bootstrap"] == ["warn"]
    fix = next(c["fix"] for c in report["checks"] if c["name"] == "bootstrap")
    assert "tcp/" in fix


def test_a_port_that_accepts_tcp_but_speaks_no_libp2p_is_a_warning(
    alice_bob: tuple[Home, Home], listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    alice, bob = alice_bob
    port = listener.getsockname()[1]
    configure(alice, bootstrap=[f"/ip4/127.0.0.1/tcp/{port}/p2p/{bob.identity().public.peer_id()}"])
    code, report = doctor(alice, "--no-model", "--dial-timeout", "0.5", capsys=capsys)
    assert code == 0
    assert levels(report)["bootstrap"] == ["warn"]
    assert "accepts TCP but is no libp2p node: it said nothing" in detail(report, "bootstrap")


def test_relay_addresses_are_checked_when_configured(
    alice_bob: tuple[Home, Home], capsys: pytest.CaptureFixture[str]
) -> None:
    alice, _ = alice_bob
    with alice.config_path.open("a") as config:  # not a Config field yet: the file's own key
        config.write('relays = ["/ip4/127.0.0.1/tcp/4001"]\n')
    code, report = doctor(alice, "--no-model", capsys=capsys)
    assert code == 1
    assert levels(report)["relay"] == ["fail"]
    assert "lacks /p2p/<peer id>" in detail(report, "relay")


def test_a_listen_port_another_process_holds_fails(
    alice_bob: tuple[Home, Home], listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    alice, _ = alice_bob
    port = listener.getsockname()[1]
    configure(alice, listen=f"/ip4/127.0.0.1/tcp/{port}")
    code, report = doctor(alice, "--no-model", capsys=capsys)
    assert code == 1
    assert levels(report)["listen"] == ["fail"]
    assert f"port {port} is in use" in detail(report, "listen")
    assert "by another process" in detail(report, "listen")


def test_a_random_port_is_a_warning(
    alice_bob: tuple[Home, Home], capsys: pytest.CaptureFixture[str]
) -> None:
    alice, _ = alice_bob  # make_homes keeps the default /ip4/127.0.0.1/tcp/0
    code, report = doctor(alice, "--no-model", capsys=capsys)
    assert code == 0
    assert levels(report)["listen"] == ["warn"]
    assert "random port" in detail(report, "listen")


def test_no_genesis_fails_and_the_checks_that_need_it_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = Home.init(tmp_path / "dana", "dana")
    code, report = doctor(home, capsys=capsys)
    assert code == 1
    found = levels(report)
    assert found["genesis"] == ["fail"]
    assert found["roster"] == ["skip"]
    assert found["base model"] == ["skip"]
    assert found["store"] == ["ok"]  # none yet: the node makes it


def test_an_identity_outside_the_roster_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice, _ = make_homes(tmp_path, ["alice", "bob"])
    erin = Home.init(tmp_path / "erin", "erin")
    erin.join(alice.genesis())
    code, report = doctor(erin, "--no-model", capsys=capsys)
    assert code == 0
    assert levels(report)["roster"] == ["warn"]
    assert "not a member of roster epoch 0" in detail(report, "roster")


def test_not_a_home_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--home", str(tmp_path / "nowhere"), "--json"])
    captured = capsys.readouterr()
    assert code == 2
    assert json.loads(captured.out)["error"]["kind"] == "HomeError"


def _join_network(tmp_path: Path, name: str, base: str, model: str) -> Home:
    home = Home.init(tmp_path / name, name)
    spec = make_spec("stack", base, TINY_SHAPES, backend="text", model=model)
    members = (Member(name, home.identity().public),)
    home.join(Genesis(name="doc-net", members=members, threshold=1, spec=spec, nonce=name))
    return home


def test_a_base_model_that_is_not_here_fails_without_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _join_network(tmp_path, "alice", BASE, str(tmp_path / "no-such-model"))
    code, report = doctor(home, "--no-model", capsys=capsys)
    assert code == 1
    assert levels(report)["base model"] == ["fail"]
    assert "is not on this machine" in detail(report, "base model")


def test_the_base_model_fingerprint_is_checked_against_the_genesis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.merge.pipeline_fixtures import save_tiny_text, tiny_text_backend

    model = str(save_tiny_text(tmp_path / "tiny-base"))
    right = _join_network(tmp_path, "alice", tiny_text_backend().fingerprint, model)
    code, report = doctor(right, capsys=capsys)
    assert code == 0, report
    assert levels(report)["base model"] == ["ok"]
    wrong = _join_network(tmp_path, "bob", BASE, model)
    code, report = doctor(wrong, capsys=capsys)
    assert code == 1
    assert levels(report)["base model"] == ["fail"]
    assert "is not the network's" in detail(report, "base model")


def test_doctor_without_the_model_check_does_not_load_torch(alice_bob: tuple[Home, Home]) -> None:
    alice, _ = alice_bob
    code = (
        "import sys\n"
        "from node.cli import main\n"
        f"code = main(['doctor', '--home', {str(alice.path)!r}, '--no-model', '--json'])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)\n"
        "print('HEAVY', code, ','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.stdout.splitlines()[-1] == "HEAVY 0 ", out.stdout + out.stderr


def test_a_running_node_holds_its_port_and_answers(
    alice_bob: tuple[Home, Home], capsys: pytest.CaptureFixture[str]
) -> None:
    alice, _ = alice_bob
    port = free_port()
    configure(alice, listen=f"/ip4/127.0.0.1/tcp/{port}", metrics_port=free_port())
    node = procs.start(alice, [])
    try:
        code, report = doctor(alice, "--no-model", capsys=capsys)
    finally:
        procs.stop([node])
    assert code == 0, report
    found = levels(report)
    assert found["listen"] == ["ok"]
    assert "held by this home's running node" in detail(report, "listen")
    assert found["metrics"] == ["ok"]
    assert "the running node's" in detail(report, "metrics")
    assert found["node"] == ["ok"]
    assert found["store"] == ["ok"]
    assert "beside the running node" in detail(report, "store")
    assert "the running node's" in detail(report, "roster")
