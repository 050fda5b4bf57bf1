"""`scripts/bench_clip.py --quick`: the paper-scale CLIP benchmark runs end to end on a tiny
CLIP (one training, distillation and search step through the pipeline's own code) and writes
its table and JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_clip", ROOT / "scripts/bench_clip.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_clip"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_measures_every_phase_and_projects_a_plugin(tmp_path: Path) -> None:
    shown: list[str] = []
    path = load_script().main(
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
