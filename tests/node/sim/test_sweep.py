"""`medforge simulate --sweep`: one row per value, a table, a JSON and a plot; bad input is 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli import main
from node.errors import ScenarioError
from node.sim import sweep
from node.sim.scenario import Churn, Scenario

BASE = ["--nodes", "8", "--commits", "3", "--authors", "2", "--duration", "60"]


def _simulate(out: Path, *extra: str) -> int:
    return main(["simulate", "--seed", "1", "--out", str(out), *BASE, *extra])


def test_a_sweep_over_two_values_writes_one_row_per_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _simulate(tmp_path / "a", "--sweep", "topology=line,star") == 0
    out = capsys.readouterr().out
    table = (tmp_path / "a" / "sweep.md").read_text()
    lines = table.splitlines()
    assert lines[0].startswith("| topology | converged | converged at (virtual s) |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| line", "| star"]
    assert all(" | yes | " in line for line in lines[2:])
    assert table.strip() in out
    result = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert result["keys"] == ["topology"]
    assert result["seeds"] == [1]
    assert [row["values"] for row in result["rows"]] == [{"topology": "line"}, {"topology": "star"}]
    assert all(row["messages_sent"] > 0 and row["converged_runs"] == 1 for row in result["rows"])
    assert (tmp_path / "a" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # same scenario, same seed: the same bytes
    assert _simulate(tmp_path / "b", "--sweep", "topology=line,star") == 0
    for name in ("sweep.md", "sweep.json", "sweep.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_grid_over_seeds_counts_the_runs_that_converged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _simulate(
        tmp_path, "--sweep", "churn.fraction=0,0.5", "--sweep", "loss=0,0.01", "--seeds", "2"
    )
    assert code == 0
    assert "2 seeds (1, 2)" in capsys.readouterr().out
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert [row["label"] for row in result["rows"]] == [
        "churn.fraction=0.0, loss=0.0",
        "churn.fraction=0.0, loss=0.01",
        "churn.fraction=0.5, loss=0.0",
        "churn.fraction=0.5, loss=0.01",
    ]
    assert all([run["seed"] for run in row["runs"]] == [1, 2] for row in result["rows"])
    assert result["rows"][2]["runs"][0]["converged_at"] is not None
    assert "| 2/2 |" in (tmp_path / "sweep.md").read_text()


def test_sweep_axes_are_read_as_their_keys_types() -> None:
    assert sweep.parse_axis("nodes=4, 8") == sweep.Axis("nodes", (4, 8))
    assert sweep.parse_axis("adversaries.garbage=0,1").values == (0, 1)
    base = Scenario(nodes=10, authors=2, churn=Churn(start=5.0))
    rows = sweep.grid(base, [sweep.parse_axis("churn.fraction=0.1,0.2")])
    assert [s.churn for _, s in rows] == [Churn(0.1, 5.0), Churn(0.2, 5.0)]
    for text, message in [
        ("colour=1,2", "sweep 'colour': unknown; keys are nodes, "),
        ("partitions=1", "a list of tables"),
        ("nodes", "expected KEY=V1,V2"),
        ("nodes=4,x", "'x' is not an integer"),
        ("loss=0.1,0.1", "a value given twice"),
    ]:
        with pytest.raises(ScenarioError, match=message):
            sweep.parse_axis(text)
    with pytest.raises(ScenarioError, match="nodes=1: nodes: at least 2"):
        sweep.grid(base, [sweep.parse_axis("nodes=4,1")])


@pytest.mark.parametrize(
    ("sweep_arg", "message"),
    [
        ("colour=red,blue", "sweep 'colour': unknown"),
        ("nodes=8,1", "sweep nodes=1: nodes: at least 2"),
        ("mode=stack,average", "sweep mode=average: mode: one of"),
    ],
)
def test_a_bad_sweep_exits_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep_arg: str, message: str
) -> None:
    assert _simulate(tmp_path, "--sweep", sweep_arg) == 2
    assert message in capsys.readouterr().err
    assert not tmp_path.exists() or not list(tmp_path.iterdir())
    assert _simulate(tmp_path, "--sweep", sweep_arg, "--json") == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["kind"] == "ScenarioError"
    assert error["exit"] == 2
    assert message in error["message"]
