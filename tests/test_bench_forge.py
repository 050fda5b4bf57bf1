"""`scripts/bench_forge.py`: its options and rows fast, and `--quick` end to end at CI size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from merge.pipeline.distill import Distilled
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "zero-shot base",
    "single: neoplasms",
    "single: circulatory",
    "single: respiratory",
    "pooled (breaks privacy)",
    "pooled distilled sets (one plugin)",
    "uniform average",
    "uniform mixture",
    "PEFT linear",
    "PEFT cat",
    "Fusion",
    "Mixture",
    "Stack",
    "Mixture (shares)",
)
# the network's default method, in every plain run too
CONTINUAL = (
    "continual + replay: Fusion",
    "continual + replay: Mixture",
    "continual + replay: Stack",
)


def load_bench() -> ModuleType:
    return load_script("bench_forge")


bf = load_bench()


def test_defaults_are_the_split_and_sizes_the_readme_table_was_measured_on() -> None:
    sizes = bf.parse([])[1]
    assert sizes.seeds == (0, 1, 2)
    assert sizes.settings == ("tasks", "skew", "heart")
    assert sizes.chapters == ("2", "9", "10")
    assert (sizes.institutions, sizes.alpha) == (3, 0.3)
    assert (sizes.steps, sizes.ipc, sizes.distill_steps, sizes.budget) == (30, 2, 30, 20)
    assert (sizes.per_class_blocks, sizes.max_test, sizes.orders) == (24, 100, "auto")
    assert [bf.chapter_task(c) for c in sizes.chapters] == [
        "neoplasms",
        "circulatory",
        "respiratory",
    ]


@pytest.mark.parametrize(
    ("text", "seeds"), [("3", (0, 1, 2)), ("4,5", (4, 5)), ("7,", (7,)), ("1", (0,))]
)
def test_seeds_are_a_count_or_a_list(text: str, seeds: tuple[int, ...]) -> None:
    assert bf.parse(["--seeds", text])[1].seeds == seeds


def test_split_options_reach_the_sizes_and_the_tag() -> None:
    args, sizes = bf.parse(
        ["--settings", "tasks", "skew", "--chapters", "4,11", "--institutions", "5", "--alpha", "1"]
    )
    assert sizes.chapters == ("4", "11")
    assert (sizes.institutions, sizes.alpha) == (5, 1.0)
    assert bf.default_tag(False, sizes) == "full-tasks-skew-ch4-11-n5-a1"
    assert bf.default_tag(False, bf.parse([])[1]) == "full"
    assert bf.default_tag(True, bf.parse(["--quick"])[1]) == "quick"


@pytest.mark.parametrize(
    "argv",
    [
        ["--chapters", "2,99"],  # no such chapter
        ["--chapters", "2,22"],  # chapter 22 has one block
        ["--chapters", "2,2"],
        ["--chapters", "9"],
        ["--orders", "0"],
        ["--orders", "some"],
        ["--seeds", "x"],
        ["--rows", "bogus"],
        ["--institutions", "1"],
        ["--alpha", "0"],
        ["--rounds", "0"],
    ],
)
def test_a_split_that_cannot_run_is_refused_before_any_model_loads(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        bf.parse(argv)


def test_continual_knobs_reach_only_what_the_command_line_set() -> None:
    """--lwf-weight / --replay-weight / --whole-task: TrainConfig fields of the continual rows
    (unset: TrainConfig's defaults), named in the tag so an ablation keeps its own files."""
    assert bf.continual_knobs(bf.parse([])[1]) == {}
    sizes = bf.parse(["--lwf-weight", "0.5", "--replay-weight", "2", "--whole-task", "on"])[1]
    assert bf.continual_knobs(sizes) == {
        "lwf_weight": 0.5,
        "replay_weight": 2.0,
        "whole_task": True,
    }
    assert bf.default_tag(False, sizes) == "full-lwf0.5-rw2-whole"
    assert bf.continual_knobs(bf.parse(["--whole-task", "off"])[1]) == {"whole_task": False}
    for bad in (["--lwf-weight", "-1"], ["--replay-weight", "nan"]):
        with pytest.raises(SystemExit):
            bf.parse(bad)


def test_rounds_reach_the_sizes_and_name_an_ablation() -> None:
    """--rounds: how often each member commits in the continual-rounds rows (default 2)."""
    sizes = bf.parse(["--rows", "continual-rounds", "--rounds", "3"])[1]
    assert (sizes.rows, sizes.rounds) == (("continual-rounds",), 3)
    assert bf.default_tag(False, sizes) == "full-rounds3"
    assert bf.default_tag(False, bf.parse(["--rows", "continual-rounds"])[1]) == "full"


def test_rows_can_be_chosen_or_none() -> None:
    assert bf.parse([])[1].rows == ("distilled", "shares", "continual")
    assert bf.parse(["--rows", "none"])[1].rows == ()
    assert bf.parse(["--rows", "shares"])[1].rows == ("shares",)


def test_orders() -> None:
    names = ("a", "b", "c")
    assert len(bf.arrival_orders(names, "auto")) == 6
    assert bf.arrival_orders(names, "2") == [("a", "b", "c"), ("a", "c", "b")]
    assert bf.arrival_orders(names, "cyclic") == [("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b")]
    assert len(bf.arrival_orders((*names, "d"), "auto")) == 4


def test_any_chapters_make_the_tasks_setting() -> None:
    sizes = bf.parse(["--quick", "--chapters", "4,11,14"])[1]
    setting = bf.build_tasks(sizes, 0)
    assert [i.name for i in setting.institutions] == ["endocrine", "digestive", "genitourinary"]
    assert set(setting.tests) == {"endocrine", "digestive", "genitourinary"}


def test_the_heart_hospitals_are_one_shared_task_or_a_task_each() -> None:
    """Either way each hospital keeps its own test set: the table shows what each one gets."""
    shared = bf.build_heart(bf.parse(["--quick"])[1], 0)
    sizes = bf.parse(["--quick", "--settings", "heart", "--heart-task", "site"])[1]
    per_site = bf.build_heart(sizes, 0)
    assert {i.task for i in shared.institutions} == {"heart-disease"}
    assert [i.task for i in per_site.institutions] == list(bf.HEART_SITES)
    assert list(shared.tests) == list(per_site.tests) == list(bf.HEART_SITES)
    assert bf.default_tag(False, sizes) == "full-heart-heartsite"
    with pytest.raises(SystemExit):
        bf.parse(["--heart-task", "pooled"])


def test_combine_pools_the_seeds_of_one_setting(tmp_path: Path) -> None:
    """Seeds run apart make one table over every seed; a seed twice, or runs of one setting on
    different splits, are refused (their mean would mean nothing)."""

    def run(seed: int, accuracy: float, **sizes: Any) -> Path:
        score = {"accuracy": accuracy, "auc": 0.5}
        samples = [
            {"seed": seed, "order": None, "row": row, "scores": {"a": score, "mean": score}}
            for row in (bf.BASE, bf.POOLED, bf.UNIFORM)
        ]
        data = {
            "sizes": {**bf.asdict(bf.Sizes(seeds=(seed,))), **sizes},
            "settings": {"heart": {"samples": samples, "seconds": 1.0}},
        }
        path = tmp_path / f"run-{seed}-{len(sizes)}.json"
        path.write_text(json.dumps(data))
        return path

    out = bf.combine([run(0, 0.5), run(1, 0.7)], tmp_path, "both")
    report = json.loads(out.with_suffix(".json").read_text())
    assert (report["sizes"]["seeds"], report["sizes"]["settings"]) == ([0, 1], ["heart"])
    heart = report["settings"]["heart"]
    assert heart["runs"] == "2 seed(s) x 0 order(s)"
    assert heart["summary"]["uniform average"]["mean"]["accuracy"]["mean"] == 0.6
    with pytest.raises(ValueError, match=r"seed\(s\) \[0\]"):
        bf.combine([run(0, 0.5), run(0, 0.6)], tmp_path, "twice")
    with pytest.raises(ValueError, match="heart_task"):
        bf.combine([run(0, 0.5), run(1, 0.7, heart_task="site")], tmp_path, "apart")


def test_pooled_distilled_sets_label_the_joint_class_list() -> None:
    def d(classes: tuple[str, ...], labels: list[int]) -> Distilled:
        x = torch.full((len(labels), 2, 3), float(len(classes)))
        return Distilled(x, torch.tensor(labels), classes, "t", "text-embeds", "base")

    inputs, labels, classes = bf.pooled_distilled([d(("a", "b"), [0, 1]), d(("c", "b"), [0, 1])])
    assert classes == ("a", "b", "c")
    assert labels.tolist() == [0, 1, 2, 1]
    assert inputs.shape == (4, 2, 3)


def test_new_rows_sit_beside_the_ones_they_are_read_against() -> None:
    singles = [r for r in ROWS if r.startswith("single: ")]  # kept in arrival order
    others = [r for r in reversed(ROWS) if r not in singles]
    present = [*others, *singles, "continual + replay: Stack", "per-module (layer): Fusion"]
    order = bf.row_order("tasks", [{"row": r} for r in present])
    assert order[: len(ROWS)] == list(ROWS)
    assert [r for r in order if bf.is_searched(r)] == [
        "Fusion",
        "Mixture",
        "Stack",
        "Mixture (shares)",
        "continual + replay: Stack",
        "per-module (layer): Fusion",
    ]


def run_quick(out: Path, *argv: str) -> Any:
    """``bench_forge.py --quick [argv]`` as a user runs it; its JSON report."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    script = str(ROOT / "scripts" / "bench_forge.py")
    proc = subprocess.run(
        [sys.executable, script, "--quick", "--out", str(out), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "bench_forge-quick.json").read_text())


@pytest.mark.slow
def test_quick_bench_writes_every_row(tmp_path: Path) -> None:
    result = run_quick(tmp_path)
    tasks = result["settings"]["tasks"]
    assert {*ROWS, *CONTINUAL} <= set(tasks["rows"]) == set(tasks["summary"])
    for row in (*ROWS, *CONTINUAL):
        mean = tasks["summary"][row]["mean"]["accuracy"]
        assert 0.0 <= mean["mean"] <= 1.0
        assert mean["n"] == 1  # one seed, one order
    searched = {"Fusion", "Mixture", "Stack", "Mixture (shares)", *CONTINUAL}
    assert set(tasks["goals"]["accuracy"]) == searched
    shares = [s["coeffs"] for s in tasks["samples"] if s["row"] == "Mixture (shares)"]
    assert all(abs(w1 + w2 - 1.0) < 1e-12 for w1, w2 in shares[0][1:])  # convex shares
    table = (tmp_path / "bench_forge-quick.md").read_text()
    assert all(f"| {row} |" in table for row in (*ROWS, *CONTINUAL))
    assert (tmp_path / "bench_forge-quick.png").stat().st_size > 10_000


@pytest.mark.slow
def test_quick_bench_commits_every_member_once_per_round(tmp_path: Path) -> None:
    """--rows continual-rounds: 2 rounds of 3 members are 6 commits; a stack commit of a
    plugin trained on its head takes (1, 1), so every stack pair says it was continual."""
    tasks = run_quick(tmp_path, "--rows", "continual-rounds")["settings"]["tasks"]
    rows = {s["row"]: s for s in tasks["samples"] if "rounds" in s["row"]}
    assert set(rows) == {
        "continual + replay, 2 rounds: Fusion",
        "continual + replay, 2 rounds: Stack",
    }
    for sample in rows.values():
        assert len(sample["coeffs"]) == 6
        assert 0.0 <= sample["scores"]["mean"]["accuracy"] <= 1.0
    assert rows["continual + replay, 2 rounds: Stack"]["coeffs"] == [[1.0, 1.0]] * 6
