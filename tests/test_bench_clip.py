"""`scripts/bench_clip.py --quick`: the paper-scale CLIP benchmark runs end to end on a tiny
CLIP (one training, distillation and search step through the pipeline's own code) and writes
its table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from tests.scripts import load_script


def test_quick_run_measures_every_phase_and_projects_a_plugin(tmp_path: Path) -> None:
    shown: list[str] = []
    path = load_script("bench_clip").main(
        ["--quick", "--device", "cpu", "--reps", "1", "--out", str(tmp_path)], emit=shown.append
    )
    assert path == tmp_path / "bench_clip-cpu-quick.json"
    data = json.loads(path.read_text())
    assert data["device"] == "cpu"
    assert data["precision"] == "float32"
    phases = {p["phase"]: p for p in data["phases"]}
    assert list(phases) == ["train", "distill", "search"]
    for p in phases.values():
        assert len(p["seconds"]) == 2  # one warm-up + --reps
        assert p["seconds_per_step"] > 0
        assert p["peak_bytes"] > 0
        assert p["projected_seconds"] == p["seconds_per_step"] * p["plugin_steps"]
    assert (phases["train"]["plugin_steps"], phases["distill"]["plugin_steps"]) == (60, 20)
    total = sum(p["projected_seconds"] for p in phases.values())
    assert data["projected_plugin_seconds"] == total
    table = path.with_suffix(".md").read_text()
    assert table == shown[0]
    assert "| train |" in table
    assert "scripts/bench_clip.py --quick --device cpu" in table
