"""The simulator: real cores on a seeded virtual network, with the real fold."""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.records import decode_record
from node.cli import main, simulate_cmd
from node.core.order import forge_order
from node.errors import ScenarioError
from node.sim import Simulation, plan, schedule, simulate, topology
from node.sim import report as reports
from node.sim.scenario import (
    ADVERSARY_KINDS,
    Churn,
    Partition,
    Scenario,
    from_mapping,
    load,
)

SMALL = Scenario(
    nodes=12, commits=6, authors=3, commit_interval=2.0, duration=200.0, sync_interval=10.0
)


def _honest(sim: Simulation) -> list:  # type: ignore[type-arg]
    return [n for n in sim.nodes if n.honest and n.online]


def test_all_honest_nodes_fold_the_same_composite_as_the_pure_order() -> None:
    sim = Simulation(plan(SMALL, seed=3))
    sim.run()
    nodes = _honest(sim)
    assert len({n.digest for n in nodes}) == 1
    assert len({n.core.root for n in nodes}) == 1
    records = [decode_record(r) for r in nodes[0].core.records()]
    order = forge_order(sim.world.genesis, records)
    assert order == nodes[0].core.order
    assert sim.world.digest(order) == nodes[0].digest
    assert len(order.commits) == SMALL.commits


def test_adversaries_never_enter_an_honest_composite_nor_crash_anyone() -> None:
    scenario = from_mapping(
        {
            "nodes": 24,
            "commits": 8,
            "authors": 4,
            "loss": 0.02,
            "adversaries": {k: 1 for k in ADVERSARY_KINDS},
            "partitions": [{"start": 5.0, "end": 40.0, "fraction": 0.5}],
            "churn": {
                "fraction": 0.2,
                "start": 4.0,
                "duration": 50.0,
                "late": 0.1,
                "late_at": 60.0,
            },
        },
        SMALL,
    )
    sim = Simulation(plan(scenario, seed=5))
    sim.run()
    result = reports.build(sim)
    assert result["convergence"]["converged"]
    assert result["adversaries"]["bad_in_honest_orders"] == 0
    assert result["adversaries"]["honest_disconnects"] == []
    assert result["adversaries"]["garbage_seen"] > 0
    nodes = _honest(sim)
    records = [decode_record(r) for r in nodes[0].core.records()]
    order = forge_order(sim.world.genesis, records)
    assert not set(order.commits) & sim.world.bad
    assert not {c for c in order.commits if sim.world.twins.get(c) in order.excluded}
    assert sim.world.digest(order) == nodes[0].digest


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    nodes=st.integers(4, 14),
    top=st.sampled_from(["random-regular", "small-world", "line", "star"]),
    loss=st.sampled_from([0.0, 0.05]),
    split=st.booleans(),
    interval=st.sampled_from([0.0, 0.5, 3.0]),
    mode=st.sampled_from(["fusion", "stack", "mixture"]),
)
def test_random_networks_converge(
    seed: int, nodes: int, top: str, loss: float, split: bool, interval: float, mode: str
) -> None:
    scenario = Scenario(
        mode=mode,
        nodes=nodes,
        topology=top,
        degree=3,
        loss=loss,
        commits=5,
        authors=min(3, nodes),
        commit_interval=interval,
        duration=300.0,
        sync_interval=10.0,
        partitions=(Partition(2.0, 30.0, 0.5),) if split else (),
    )
    result = simulate(scenario, seed)
    assert result["convergence"]["converged"]
    assert result["convergence"]["orphans"] == 0
    assert result["adversaries"]["honest_disconnects"] == []


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    kinds=st.lists(st.sampled_from(ADVERSARY_KINDS), min_size=1, max_size=4, unique=True),
)
def test_any_mix_of_adversaries_leaves_honest_composites_alone(seed: int, kinds: list[str]) -> None:
    scenario = Scenario(
        nodes=16,
        degree=4,
        commits=5,
        authors=3,
        commit_interval=1.0,
        duration=200.0,
        sync_interval=10.0,
        adversaries={k: 1 for k in kinds},
    )
    sim = Simulation(plan(scenario, seed))
    sim.run()
    result = reports.build(sim)
    assert result["adversaries"]["bad_in_honest_orders"] == 0
    assert result["adversaries"]["honest_disconnects"] == []
    # Adversaries that cut the honest nodes apart (they get disconnected, or never serve
    # blobs) leave each side on its own; otherwise every honest node converges.
    assert result["convergence"]["converged"] or not sim.honest_connected()


def test_a_plan_is_data_and_the_simulation_only_runs_it() -> None:
    """Planning decides (topology, roles, timed steps); running a plan leaves it as it was, and
    one plan run again gives the same report as ``simulate`` on the same scenario and seed."""
    scenario = Scenario(
        nodes=12,
        commits=4,
        authors=3,
        commit_interval=2.0,
        duration=80.0,
        sync_interval=10.0,
        partitions=(Partition(5.0, 30.0, 0.5),),
        adversaries={"garbage": 1},
    )
    p = plan(scenario, seed=4)
    assert p == plan(scenario, seed=4)
    assert [s.at for s in p.steps] == sorted(s.at for s in p.steps)
    kinds = [type(s).__name__ for s in p.steps]
    assert kinds.count("Publish") == 4
    assert kinds.count("Split") == kinds.count("Heal") == 1
    assert kinds.count("Attack") == schedule.TIMES
    assert p.roles.count("author") == 3
    assert p.roles.count("garbage") == 1
    sim = Simulation(p)
    sim.run()
    assert p == plan(scenario, seed=4)
    assert reports.to_json(reports.build(sim)) == reports.to_json(simulate(scenario, 4))


def test_blobs_are_pulled_once_per_node() -> None:
    result = simulate(Scenario(nodes=30, commits=10, authors=5, degree=5, duration=100.0), 7)
    assert result["payload"]["duplicate_bytes"] == 0
    assert result["payload"]["max_ratio_per_blob"] <= 1.05


def _cli(tmp: Path, seed: int, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    simulate_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["simulate", "--seed", str(seed), "--out", str(tmp), *extra])
    code: int = args.func(args)
    return code


@pytest.mark.slow
def test_same_scenario_and_seed_give_identical_reports(tmp_path: Path) -> None:
    """Twice in this process (JSON and PNG byte for byte), and once more in a fresh
    interpreter with another hash seed: no set iteration order leaks into the trace."""
    toml = tmp_path / "s.toml"
    toml.write_text(
        "nodes = 10\ncommits = 4\nauthors = 2\nduration = 120.0\nloss = 0.05\n"
        "[[partitions]]\nstart = 2.0\nend = 20.0\n[adversaries]\ngarbage = 1\nequivocate = 1\n"
    )
    outputs = []
    for k in range(2):
        assert _cli(tmp_path / f"run{k}", 9, "--scenario", str(toml)) == 0
        out = tmp_path / f"run{k}"
        outputs.append(((out / "report.json").read_bytes(), (out / "report.png").read_bytes()))
    assert outputs[0] == outputs[1]
    code = (
        "import sys, argparse; from node.cli import simulate_cmd;"
        "p = argparse.ArgumentParser(); simulate_cmd.register(p.add_subparsers());"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    fresh = tmp_path / "fresh"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "simulate",
            "--scenario",
            str(toml),
            "--seed",
            "9",
            "--out",
            str(fresh),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    assert (fresh / "report.json").read_bytes() == outputs[0][0]


def test_cli_runs_a_scenario_with_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _cli(
            tmp_path,
            1,
            "--nodes",
            "8",
            "--commits",
            "3",
            "--authors",
            "2",
            "--duration",
            "60",
            "--topology",
            "line",
        )
        == 0
    )
    assert "converged: True" in capsys.readouterr().out
    assert (tmp_path / "report.png").stat().st_size > 0
    assert main(["simulate", "--out", str(tmp_path), "--topology", "torus"]) == 2
    assert "error: ScenarioError: topology: one of" in capsys.readouterr().err


def test_scenario_files_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("nodes = 5\ncolour = 'red'\n")
    with pytest.raises(ScenarioError, match="colour"):
        load(bad)
    with pytest.raises(ScenarioError, match="latency"):
        Scenario(latency="gaussian:1")
    with pytest.raises(ScenarioError, match="adversaries"):
        Scenario(adversaries={"dragon": 1})
    good = tmp_path / "good.toml"
    good.write_text("nodes = 17\nduration = 90\n[churn]\nfraction = 0.5\n")
    assert load(good) == Scenario(nodes=17, duration=90.0, churn=Churn(fraction=0.5))
    assert isinstance(load(good).duration, float)
    for data, message in [
        ({"nodes": "five"}, "nodes: expected int, got 'five'"),
        ({"loss": True}, "loss: expected float"),
        ({"mode": "average"}, "mode: one of"),
        ({"churn": {"colour": 1}}, r"churn\.colour"),
        ({"partitions": [{"start": 1.0}]}, r"partitions\[0\]\.end: required"),
        ({"adversaries": {"garbage": -1}}, "adversaries.garbage: a count >= 0"),
    ]:
        with pytest.raises(ScenarioError, match=message):
            from_mapping(data)


def test_topologies_are_connected_and_seeded(tmp_path: Path) -> None:
    for top in ("random-regular", "small-world", "line", "star"):
        s = Scenario(nodes=40, topology=top, degree=4)
        edges = topology.build(s, random.Random(1))
        assert topology.connected(40, edges)
        assert edges == topology.build(s, random.Random(1))
    assert (
        topology.diameter(
            topology.neighbours(
                5, topology.build(Scenario(nodes=5, authors=1, topology="line"), random.Random(0))
            ),
            random.Random(0),
        )
        == 4
    )
    measured = tmp_path / "edges.txt"
    measured.write_text("0 1 0.5\n1 2\n# comment\n2 3 0.25\n")
    s = Scenario(nodes=4, authors=1, topology="file", topology_file=str(measured))
    edges = topology.build(s, random.Random(0))
    assert edges[(0, 1)] == 0.5
    assert edges[(2, 3)] == 0.25
