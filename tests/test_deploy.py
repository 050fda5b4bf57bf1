"""deploy/: the systemd unit and the container image, checked statically (no image is built
here: no docker daemon, no network). ``systemd-analyze`` verifies the unit where it exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
HOME = "/var/lib/medforge/home"
PORT = 4001


def script_name() -> str:
    """The console script pyproject.toml installs (``[project.scripts]``)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (name,) = [n for n, target in scripts.items() if target == "node.cli:main"]
    return str(name)


def unit() -> dict[str, dict[str, list[str]]]:
    """The unit as {section: {key: [values]}} (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (DEPLOY / "medforge.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_the_unit_runs_the_node_as_its_own_user_with_hardening() -> None:
    service = unit()["Service"]

    def one(key: str) -> str:
        assert key in service, f"no {key}= in [Service]"
        return service[key][-1]

    assert one("Type") == "simple"
    assert one("User") == "medforge"
    assert one("WorkingDirectory")
    assert one("EnvironmentFile").startswith("/etc/medforge/")
    exec_start = one("ExecStart").split()
    assert Path(exec_start[0]).name == script_name()
    assert exec_start[1:] == ["node", "run", "--home", HOME, "--log-json"]
    assert one("Restart") == "on-failure"
    assert one("RestartPreventExitStatus") == "2"  # a configuration error: not retried
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert one(key) == value, key
    writable = " ".join(service["ReadWritePaths"]).split()
    assert any(HOME.startswith(path) for path in writable), writable
    assert unit()["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_env_example_names_the_passphrase_variable() -> None:
    from node.shell.home import PASSPHRASE_ENV

    text = (DEPLOY / "medforge.env.example").read_text()
    assert re.search(rf"^{PASSPHRASE_ENV}=", text, re.MULTILINE)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """``verify`` with ExecStart pointed at this venv's script (it checks the binary exists);
    any warning (an unknown key, a bad value) fails the test. ``security`` rates the
    hardening from 0 (best) to 10: this unit rated 1.5 when written; above 3.0 fails."""
    script = Path(sys.executable).with_name(script_name())
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    text = (DEPLOY / "medforge.service").read_text()
    copy = tmp_path / "medforge.service"
    copy.write_text(re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={script}", text))
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stderr
    assert not verify.stderr.strip(), verify.stderr  # systemd only warns of unknown keys
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=30", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_the_dockerfile_builds_on_slim_python_with_cpu_torch_first() -> None:
    steps = dockerfile()
    froms = [arg for op, arg in steps if op == "FROM"]
    assert froms
    assert all(f.split()[0] == "python:3.11-slim" for f in froms), froms
    runs = [arg for op, arg in steps if op == "RUN"]
    apt = next(r for r in runs if "apt-get install" in r)
    assert {"gcc", "libgmp-dev"} <= set(apt.split())  # fastecdsa compiles against gmp
    torch_at = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    project_at = next(i for i, r in enumerate(runs) if re.search(r"pip install /src\b", r))
    assert torch_at < project_at  # else the bare torch requirement pulls a CUDA build
    args = {arg.split("=", 1)[0]: arg.split("=", 1)[1] for op, arg in steps if op == "ARG"}
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert "$TORCH_INDEX" in runs[torch_at]
    assert "--index-url" in runs[torch_at]


def test_the_image_runs_medforge_as_a_user_with_a_volume_and_a_healthcheck() -> None:
    steps = dockerfile()
    last_stage = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    user = [arg for op, arg in last_stage if op == "USER"]
    assert user
    assert user[-1] not in ("root", "0")
    volumes = [arg for op, arg in last_stage if op == "VOLUME"]
    assert volumes
    assert "/var/lib/medforge" in volumes[-1]
    assert f"{PORT}/tcp" in [arg for op, arg in last_stage if op == "EXPOSE"]
    (entry,) = [arg for op, arg in last_stage if op == "ENTRYPOINT"]
    assert entry == f'["{script_name()}"]'
    (cmd,) = [arg for op, arg in last_stage if op == "CMD"]
    assert cmd == f'["node", "run", "--home", "{HOME}", "--log-json"]'
    (health,) = [arg for op, arg in last_stage if op == "HEALTHCHECK"]
    assert f'"{script_name()}", "status", "--home", "{HOME}"' in health


def test_the_build_context_leaves_out_the_venv_and_results() -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    for path in (".git", ".venv", "bench-results", "tests"):
        assert path in ignored
    copies = [arg.split() for op, arg in dockerfile() if op == "COPY" and "--from" not in arg]
    sources = {source for copy in copies for source in copy[:-1]}
    assert sources == {"pyproject.toml", "README.md", "crypto", "merge", "node"}
    assert not sources & ignored  # what the image needs stays in the context
