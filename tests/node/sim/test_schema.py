"""The scenario schema: every key in --help and docs/simulator.md, from the fields alone."""

from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from node.cli import main, network_cmd
from node.sim import Simulation, plan, schema, simulate
from node.sim.scenario import ADVERSARY_KINDS, Churn, Partition, Scenario, load

DOCS = Path(__file__).parents[3] / "docs" / "simulator.md"


def _help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _expected_rows() -> list[tuple[str, str, str]]:
    """(key, type, default) of every key, read straight off the dataclasses."""
    rows = []
    for cls in (Scenario, Partition, Churn):
        for f in fields(cls):
            if f.type in ("int", "float", "str"):
                default = f.default
                shown = f'"{default}"' if isinstance(default, str) else str(default)
                kind = "string" if f.type == "str" else str(f.type)
                rows.append((f.name, kind, "required" if default is MISSING else shown))
    return rows + [(kind, "int", "0") for kind in ADVERSARY_KINDS]


def test_help_lists_every_scenario_key_with_type_default_and_meaning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = _help(capsys)
    for name, kind, default in _expected_rows():
        line = re.search(rf"^ +{re.escape(name)} +{kind} +{re.escape(default)} +\S", text, re.M)
        assert line, (name, kind, default)
    nested = {f.name for f in fields(Scenario)} - {k.name for k in schema.sections()[0][1]}
    assert nested == {"partitions", "churn", "adversaries"}
    for section in ("[[partitions]]", "[churn]", "[adversaries]"):
        assert f"  {section}  (" in text
    assert "example scenario TOML:" in text
    assert '  mode = "stack"' in text


def test_every_field_has_a_meaning() -> None:
    for cls in (Scenario, Partition, Churn):
        for f in fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"


def test_docs_hold_the_current_schema() -> None:
    text = DOCS.read_text()
    assert schema.sync(text) == text, "run: .venv/bin/python -m node.sim.schema docs/simulator.md"
    for name, kind, default in _expected_rows():
        assert f"| `{name}` | {kind} | `{default}` |" in text


def test_the_example_scenario_loads_and_converges(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text(schema.EXAMPLE)
    scenario = load(path)
    assert scenario.partitions == (Partition(20.0, 60.0, 0.5),)
    assert scenario.adversaries == {"garbage": 1, "equivocate": 1}
    result = simulate(scenario, 1)
    assert result["convergence"]["converged"]
    assert result["adversaries"]["bad_in_honest_orders"] == 0


def test_the_default_mode_is_network_creates() -> None:
    parser = argparse.ArgumentParser()
    network_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["network", "create", "--home", "h", "--name", "n", "--base", "b"])
    assert Scenario().mode == args.mode == "stack"
    sim = Simulation(plan(Scenario(nodes=3, authors=1), 0))
    assert sim.world.genesis.spec["merge"]["mode"] == "stack"


def test_sweepable_keys_are_the_scalars_below_their_tables() -> None:
    keys = schema.scalars()
    assert keys["nodes"] is int
    assert keys["loss"] is float
    assert keys["mode"] is str
    assert keys["churn.fraction"] is float
    assert keys["adversaries.garbage"] is int
    assert not [k for k in keys if k.startswith("partitions")]
