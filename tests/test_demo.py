"""The main job, end to end, as a new user runs it: `medforge demo --quick`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_demo_converges_to_one_composite(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", "demo", "--quick", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((workdir / "demo-results.json").read_text())
    digests = set(summary["digests"].values())
    assert len(digests) == 1
    assert summary["results"]["digest"] in digests  # refolded from the log: same bytes
    rows = summary["results"]["rows"]
    assert {"zero-shot base", "uniform average", "medforge composite (stack)"} <= rows.keys()
    assert (workdir / "demo-results.png").stat().st_size > 10_000
    for name in ("st-marys", "riverside", "northgate"):
        assert not (workdir / name / "control.sock").exists()  # every node stopped cleanly
    assert "converged with 2/2 peers" in proc.stdout


@pytest.mark.slow
def test_ctrl_c_stops_every_node(tmp_path: Path) -> None:
    import signal

    workdir = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "demo", "--quick", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # wait for the third node, then press Ctrl-C
        seen.append(line)
        if line.startswith("node northgate up"):
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(timeout=60) == 130, "".join(seen) + rest
    for name in ("st-marys", "riverside", "northgate"):
        assert not (workdir / name / "control.sock").exists()  # each node shut down cleanly
