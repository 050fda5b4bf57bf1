"""The paths a new operator takes that issue 15's walk found unclear (README, own data, four
real nodes): `medforge node run` refuses a config.toml it cannot use with one line and exit 2
(no traceback, no endless redial), `medforge node stop` waits and says the node stopped, a
`medforge ... | head` is not an error, and `commit --parent/--supersedes` refuse a bad id
before anything loads."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.cli import Exit
from node.cli import main as cli
from node.shell.home import Home
from tests.conftest import write_distilled
from tests.node import procs
from tests.node.conftest import make_homes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def reap_nodes() -> Iterator[None]:
    """Whatever node process a test started and did not stop is killed after it."""
    yield
    procs.reap()


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_homes(tmp_path, ["alice"])[0]


def medforge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def refused(home: Home, config: str) -> str:
    """`node run` on ``config``: exit 2, one `error:` line, no traceback; that line."""
    home.config_path.write_text(config)
    result = medforge("node", "run", "--home", str(home.path), timeout=30)
    assert result.returncode == Exit.BAD_INPUT, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_node_run_refuses_a_config_it_cannot_use(home: Home) -> None:
    listen = 'name = "alice"\nlisten = "/ip4/127.0.0.1/tcp/0"\n'
    assert "config.toml" in refused(home, listen + "bootstrap = [\n")  # TOML that does not parse
    assert "listen" in refused(home, 'name = "alice"\nlisten = 4001\n')
    bad_peer = listen + 'bootstrap = ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWnotapeerid"]\n'
    assert "bootstrap" in refused(home, bad_peer)  # was redialled forever
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        line = refused(home, listen + f"metrics_port = {port}\n")  # was a traceback, exit 1
    assert "PortInUse" in line, line
    assert "metrics_port" in line, line


def test_node_stop_waits_and_says_so(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    node = procs.start(home, [])
    assert cli(["node", "stop", "--home", str(home.path)]) == 0
    assert f"node alice on {home.path} stopped" in capsys.readouterr().out
    assert node.proc.wait(timeout=1) == 0  # exited by the time stop returned
    assert node.proc.stdout is not None
    node.proc.stdout.close()
    assert cli(["node", "stop", "--home", str(home.path)]) == Exit.NO_NODE


def test_a_closed_stdout_is_not_an_error(home: Home) -> None:
    """`medforge network show | head -1`: the reader leaves early; no `error:` line, 141."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "network", "show", "--home", str(home.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # before it writes: every write finds the pipe closed
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == Exit.STDOUT_CLOSED, err
    assert "error" not in err.lower(), err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("flag", ["--parent", "--supersedes"])
@pytest.mark.parametrize("value", ["zz", "abcd"])
def test_commit_refuses_a_bad_id_before_anything(
    home: Home,
    tmp_path: Path,
    make_adapter: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
) -> None:
    args = ["commit", "--home", str(home.path), "--adapter", str(make_adapter())]
    args += ["--distilled", str(write_distilled(tmp_path / "d.safetensors")), "--task", "t"]
    args += ["--coeffs", "1", "1", flag, value, "--out", str(tmp_path / "bundle")]
    with pytest.raises(SystemExit) as exit_:
        cli(args)
    assert exit_.value.code == Exit.BAD_INPUT
    assert "64-character hex id" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()
