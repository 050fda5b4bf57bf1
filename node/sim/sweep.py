"""A sweep: one scenario run once per value of some of its keys, and the comparison.

Rules:

- An axis is ``KEY=V1,V2,...``: a key ``node.sim.schema.scalars()`` names (``nodes``,
  ``churn.fraction``, ``adversaries.garbage``, ...) and values read as its type. Several axes
  make a grid: one row per combination, the first axis varying slowest.
- Every scenario of the grid is built (so checked) before anything runs: a bad key or value is
  a ``ScenarioError`` naming it, and nothing ran.
- Each row runs every seed; a sweep is a pure function of the base scenario, the axes and the
  seeds, like one run. A row's figures are medians over its seeds (``median_low``: a value
  some run had), its times over the runs that converged.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from node.errors import ScenarioError
from node.sim.scenario import Scenario, from_mapping
from node.sim.schema import scalars


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[Any, ...]


def parse_axis(text: str) -> Axis:
    """``KEY=V1,V2,...`` as an axis, each value read as the key's type."""
    key, eq, rest = (part.strip() for part in text.partition("="))
    if not eq or not key or not rest:
        raise ScenarioError(f"sweep {text!r}: expected KEY=V1,V2,...")
    types = scalars()
    if key not in types:
        why = "a list of tables: not one value" if key.startswith("partitions") else "unknown"
        raise ScenarioError(f"sweep {key!r}: {why}; keys are {', '.join(types)}")
    values = [_read(key, types[key], raw.strip()) for raw in rest.split(",")]
    if len(set(values)) != len(values):
        raise ScenarioError(f"sweep {key}: a value given twice in {rest!r}")
    return Axis(key, tuple(values))


def _read(key: str, kind: type, raw: str) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise ScenarioError(f"sweep {key}: {raw!r} is not {_NAMES[kind]}") from None


_NAMES = {int: "an integer", float: "a number", str: "a string"}


def label(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "scenario"


def apply(base: Scenario, values: Mapping[str, Any]) -> Scenario:
    """``base`` with each (dotted) key set to its value."""
    data: dict[str, Any] = {}
    for key, value in values.items():
        table, dot, name = key.partition(".")
        if not dot:
            data[key] = value
        elif table == "churn":
            data.setdefault("churn", asdict(base.churn))[name] = value
        else:
            data.setdefault("adversaries", dict(base.adversaries))[name] = value
    try:
        return from_mapping(data, base)
    except ScenarioError as exc:
        raise ScenarioError(f"sweep {label(values)}: {exc}") from exc


def grid(base: Scenario, axes: Sequence[Axis]) -> list[tuple[dict[str, Any], Scenario]]:
    """Each combination of the axes' values with its scenario (all built, so all checked)."""
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise ScenarioError(f"sweep: a key swept twice in {keys}")
    combos = itertools.product(*(a.values for a in axes))
    rows = [dict(zip(keys, combo, strict=True)) for combo in combos]
    return [(values, apply(base, values)) for values in rows]


def run(base: Scenario, axes: Sequence[Axis], seeds: Sequence[int]) -> dict[str, Any]:
    """The sweep's JSON-ready result: per row its values, each run's figures, their medians."""
    from node.sim import simulate

    if not seeds:
        raise ScenarioError("sweep: at least one seed")
    rows = []
    for values, scenario in grid(base, axes):
        runs = [figures(seed, simulate(scenario, seed)) for seed in seeds]
        rows.append({"values": values, "label": label(values), "runs": runs, **_medians(runs)})
    return {
        "scenario": base.to_dict(),
        "keys": [a.key for a in axes],
        "seeds": list(seeds),
        "rows": rows,
    }


def figures(seed: int, report: dict[str, Any]) -> dict[str, Any]:
    """What a sweep compares, out of one run's report."""
    c, traffic = report["convergence"], report["traffic"]
    return {
        "seed": seed,
        "converged": c["converged"],
        "converged_at": c["converged_at"] if c["converged"] else None,
        "distinct_digests": c["distinct_digests"],
        "commits_signed": c["commits_signed"],
        "delay_median": report["propagation"]["delay_median"],
        "messages_sent": traffic["messages_sent"],
        "bytes_sent": traffic["bytes_sent"],
        "duplicate_bytes": report["payload"]["duplicate_bytes"],
    }


def _median(runs: list[dict[str, Any]], key: str) -> Any:
    present = [r[key] for r in runs if r[key] is not None]
    return statistics.median_low(present) if present else None


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    times = [r["converged_at"] for r in runs if r["converged_at"] is not None]
    keys = ("delay_median", "messages_sent", "bytes_sent", "duplicate_bytes")
    return {
        "converged_runs": len(times),
        "converged_at_median": statistics.median_low(times) if times else None,
        "converged_at_max": max(times, default=None),
        **{k: _median(runs, k) for k in keys},
    }


COLUMNS = (
    "converged",
    "converged at (virtual s)",
    "commit everywhere, median (s)",
    "messages sent",
    "bytes sent",
    "duplicate bytes",
)


def table(result: dict[str, Any]) -> str:
    """The comparison as a markdown table, one row per combination of values."""
    keys, n = result["keys"] or ["scenario"], len(result["seeds"])
    lines = [
        "| " + " | ".join([*keys, *COLUMNS]) + " |",
        "|" + "---|" * (len(keys) + len(COLUMNS)),
    ]
    for row in result["rows"]:
        values = [str(v) for v in row["values"].values()] or ["base"]
        lines.append("| " + " | ".join([*values, *_cells(row, n)]) + " |")
    if n > 1:
        lines.append("")
        lines.append(
            f"{n} seeds ({', '.join(map(str, result['seeds']))}): converged runs of all, "
            "converged at as median (max) over the runs that converged, the rest medians."
        )
    return "\n".join(lines)


def _cells(row: dict[str, Any], n: int) -> list[str]:
    done = row["converged_runs"]
    at = "-" if row["converged_at_median"] is None else f"{row['converged_at_median']}"
    if n > 1 and done:
        at += f" ({row['converged_at_max']})"
    return [
        ("yes" if done else "no") if n == 1 else f"{done}/{n}",
        at,
        "-" if row["delay_median"] is None else str(row["delay_median"]),
        str(row["messages_sent"]),
        str(row["bytes_sent"]),
        str(row["duplicate_bytes"]),
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    """The comparison plot: per row, convergence time (each seed a dot), converged runs,
    messages and bytes sent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, seeds = result["rows"], result["seeds"]
    x = list(range(len(rows)))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    s = result["scenario"]
    base = [
        f"{k}={s[k]}"
        for k in ("nodes", "topology", "mode", "commits")
        if k not in rows[0]["values"]
    ]
    fig.suptitle(
        f"sweep over {', '.join(result['keys']) or 'seeds'}; seeds {seeds}\n"
        f"base scenario: {', '.join(base)}",
        fontsize=10,
    )
    ax = axes[0][0]
    ax.bar(x, [r["converged_at_median"] or 0 for r in rows], alpha=0.4, label="median")
    for i, row in enumerate(rows):
        times = [run["converged_at"] for run in row["runs"] if run["converged_at"] is not None]
        ax.plot([i] * len(times), times, "k.", label="a seed" if i == 0 else "_seed")
    ax.set(title="converged at (virtual s)", ylabel="virtual s")
    ax.legend(fontsize=7)
    panels = [
        (axes[0][1], [r["converged_runs"] / len(seeds) for r in rows], "runs converged"),
        (axes[1][0], [r["messages_sent"] for r in rows], "messages sent (median)"),
        (axes[1][1], [r["bytes_sent"] for r in rows], "bytes sent (median)"),
    ]
    for panel, heights, name in panels:
        panel.bar(x, heights)
        panel.set(title=name)
    axes[0][1].set_ylim(0, 1.05)
    for panel in axes[1]:
        panel.set_xticks(x, [r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)
