"""The report's plot marks what happened when: partitions, churn, commits; its title, the run."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from node.sim import Simulation, plan
from node.sim import report as reports
from node.sim.scenario import Churn, Partition, Scenario
from node.sim.schedule import SetOnline

SCENARIO = Scenario(
    nodes=12,
    topology="small-world",
    commits=5,
    authors=3,
    commit_interval=2.0,
    duration=120.0,
    sync_interval=10.0,
    partitions=(Partition(5.0, 30.0, 0.5), Partition(60.0, 200.0)),
    churn=Churn(fraction=0.3, start=8.0, duration=20.0, late=0.2, late_at=40.0),
)


def _report(seed: int) -> dict:  # type: ignore[type-arg]
    sim = Simulation(plan(SCENARIO, seed))
    sim.run()
    return reports.build(sim)


def test_the_timeline_is_what_the_plan_did() -> None:
    result = _report(5)
    steps = plan(SCENARIO, 5).steps
    churn = [[s.at, s.node, s.online] for s in steps if isinstance(s, SetOnline)]
    assert result["timeline"]["churn"] == churn
    assert len(churn) == 2 * (2 + 1)  # 30% of 9 plain nodes leave, 20% join late
    assert result["timeline"]["partitions"] == [[5.0, 30.0, 0.5], [60.0, 200.0, 0.5]]
    commits = result["timeline"]["commits"]
    assert len(commits) == result["convergence"]["commits_signed"] >= SCENARIO.commits
    assert commits == sorted(commits)
    assert result["traffic"]["messages_sent"] == sum(result["nodes"]["messages"]) > 0
    assert result["traffic"]["bytes_sent"] == sum(result["nodes"]["sent"])


def test_the_plot_marks_partitions_churn_and_commits_under_a_title_with_the_seed(
    tmp_path: Path,
) -> None:
    result = _report(5)
    fig = reports.figure(result)
    try:
        title = fig.get_suptitle()
        assert title.startswith("seed 5: 12 nodes, small-world degree 4, mode stack\n")
        assert "5 commits by 3 authors" in title
        assert "2 partition(s)" in title
        ax = fig.axes[0]
        handles, labels = ax.get_legend_handles_labels()
        assert labels == ["digests", "partition", "commit", "node(s) down", "node(s) up"]
        spans = [p for p in ax.patches if p.get_label() in ("partition", "_partition")]
        extents = [(p.get_x(), p.get_x() + p.get_width()) for p in spans]
        assert extents == [(5.0, 30.0), (60.0, 120.0)]  # the second is cut at the duration
        (ticks,) = [c for c in ax.collections if c.get_label() == "commit"]
        assert len(ticks.get_segments()) == len(result["timeline"]["commits"])
        down = next(line for line in ax.lines if line.get_label() == "node(s) down")
        up = next(line for line in ax.lines if line.get_label() == "node(s) up")
        assert list(down.get_xdata()) == [0.0, 8.0]  # the late joiners, then the churn
        assert list(up.get_xdata()) == [28.0, 40.0]
        assert sorted(t.get_text() for t in ax.texts) == ["1", "1", "2", "2"]
    finally:
        plt.close(fig)
    reports.plot(result, tmp_path / "a.png")
    reports.plot(_report(5), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert "seed 6:" in reports.title(_report(6))
