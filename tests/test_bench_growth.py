"""`scripts/bench_growth.py --quick`: the growth benchmark runs end to end at CI size, through
the node's real Composer and checkpoint files (its own asserts hold every restart and refold to
the running composer's digest, and refolds up to 100 commits to a fold from empty)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.scripts import load_script


def test_quick_run_writes_every_mode_and_size(tmp_path: Path) -> None:
    load_script("bench_growth").main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "bench_growth-quick.json").read_text())
    points = {(p["mode"], p["commits"]): p for p in data["points"]}
    assert set(points) == {(m, n) for m in ("stack", "fusion", "mixture") for n in (1, 10, 40)}
    assert "dense" in points["stack", 40]["representation"]
    # A restart after 40 commits loads the checkpoint at 40 and applies nothing.
    assert points["stack", 40]["restart_applied"] == 0
    # A refold after an orphan d from the tip applies O(d + checkpoint spacing), not O(N).
    assert points["stack", 40]["refold"]["1"]["applied"] <= 1 + 8 + 1
    assert (tmp_path / "bench_growth-quick.png").stat().st_size > 0
