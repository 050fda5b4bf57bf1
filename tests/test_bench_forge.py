"""`scripts/bench_forge.py --quick`: the MedForge comparison end to end at CI size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "zero-shot base",
    "single: neoplasms",
    "single: circulatory",
    "single: respiratory",
    "pooled (breaks privacy)",
    "uniform average",
    "PEFT linear",
    "PEFT cat",
    "Fusion",
    "Mixture",
    "Stack",
)


@pytest.mark.slow
def test_quick_bench_writes_every_row(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_forge.py"),
            "--quick",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_forge-quick.json").read_text())
    tasks = result["settings"]["tasks"]
    assert set(ROWS) <= set(tasks["rows"]) == set(tasks["summary"])
    for row in ROWS:
        mean = tasks["summary"][row]["mean"]["accuracy"]
        assert 0.0 <= mean["mean"] <= 1.0
        assert mean["n"] == 1  # one seed, one order
    assert set(tasks["goals"]["accuracy"]) == {"Fusion", "Mixture", "Stack"}
    table = (tmp_path / "bench_forge-quick.md").read_text()
    assert all(f"| {row} |" in table for row in ROWS)
    assert (tmp_path / "bench_forge-quick.png").stat().st_size > 10_000
