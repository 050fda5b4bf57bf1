"""The report of one simulation run: a JSON-ready dict, a short text, and a PNG.

Rules: everything in the report is a function of the scenario and the seed (virtual times, byte
counts, digests), never of the wall clock, so two runs give the same bytes; floats are rounded
to microseconds; keys are sorted. The plot (``figure``) is titled with the seed
and the scenario's main knobs, and shows distinct composite digests among online honest nodes
over time (partitions shaded, commits as ticks, churn as down/up markers with the node count),
each node's time to its final composite, bytes sent and received per node, and duplicate
payload bytes per node.

Figures:

- ``convergence.converged``: every online honest node has the same set root and composite;
  ``honest_connected`` says whether that was possible at all (adversaries do not cut the
  honest nodes apart).
- ``propagation``: per honest commit, the time from publication until every honest node holds it
  complete, against its lower bound ``latency eccentricity of the author + blob bytes /
  bandwidth``; ``bound_formula`` is the coarser ``diameter x mean latency + size / bandwidth``.
- ``payload.max_ratio_per_blob``: the most payload bytes any node received for one blob,
  divided by the blob's size (1.0 = every blob pulled exactly once).
- ``traffic``: messages (protocol messages, blob requests, blobs) and bytes sent by all nodes.
- ``timeline``: when honest commits were signed (rebases included), each churn step
  ``[t, node, online]`` and each partition ``[start, end, fraction]``: what the plot marks.
- ``adversaries.bad_in_honest_orders``: adversarial commits found in honest orders (must be 0);
  ``honest_disconnects``: honest nodes that disconnected each other (must be 0).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.sim.network import Simulation
from node.sim.schedule import SetOnline
from node.sim.simnode import SimNode
from node.sim.topology import diameter, latency_eccentricity

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _r(x: float) -> float:
    return round(x, 6)


def build(sim: Simulation) -> dict[str, Any]:
    honest = [n for n in sim.nodes if n.honest]
    online = [n for n in honest if n.online]
    return {
        "scenario": sim.s.to_dict(),
        "seed": sim.seed,
        "convergence": _convergence(sim, online),
        "propagation": _propagation(sim, honest),
        "payload": _payload(sim, honest),
        "adversaries": _adversaries(sim, honest),
        "traffic": _traffic(sim),
        "timeline": _timeline(sim),
        "nodes": _per_node(sim),
        "samples": [[_r(t), k] for t, k in sim.samples],
    }


def _convergence(sim: Simulation, online: list[SimNode]) -> dict[str, Any]:
    digests = Counter(n.digest or "" for n in online)
    roots = Counter(n.core.root.hex() for n in online)
    final = min(digests, key=lambda d: (-digests[d], d)) if digests else ""
    times = [n.changed_at for n in online if n.digest == final]
    published = [sim.world.published[c] for c in sim.authored]
    return {
        "converged": len(digests) == 1 and len(roots) == 1,
        "honest_connected": sim.honest_connected(),
        "final_digest": final,
        "distinct_digests": len(digests),
        "distinct_roots": len(roots),
        "order_length": max((len(n.core.order.commits) for n in online), default=0),
        "orphans": max((len(n.core.order.orphans) for n in online), default=0),
        "commits_signed": len(sim.authored),  # by honest authors, rebases included
        "commits_refused": sim.rejected,  # stale rebases the author's own core refused
        "last_publish": _r(max(published, default=0.0)),
        "converged_at": _r(max(times, default=0.0)),
    }


def _propagation(sim: Simulation, honest: list[SimNode]) -> dict[str, Any]:
    s, world = sim.s, sim.world
    latencies = list(sim.latency.values())
    hops = diameter(sim.adj, sim.rng)
    delays, bounds = [], []
    eccentricity: dict[int, float] = {}
    for commit_id in sim.authored:
        done = sim.completed.get(commit_id, [])
        if len(done) < len(honest):
            continue
        author = next(
            n
            for n in sim.nodes
            if n.identity and n.identity.public == world.commits[commit_id].author
        )
        if author.index not in eccentricity:
            eccentricity[author.index] = latency_eccentricity(author.index, sim.adj, sim.latency)
        size = world.blob_bytes(world.commits[commit_id])
        delays.append(max(done) - world.published[commit_id])
        bounds.append(eccentricity[author.index] + size / s.bandwidth)
    blob = s.adapter_bytes + s.distilled_bytes + s.config_bytes
    ratios = [d / b for d, b in zip(delays, bounds, strict=True) if b > 0]
    return {
        "commits_everywhere": len(delays),
        "delay_median": _r(statistics.median(delays)) if delays else None,
        "delay_max": _r(max(delays)) if delays else None,
        "bound_median": _r(statistics.median(bounds)) if bounds else None,
        "ratio_median": _r(statistics.median(ratios)) if ratios else None,
        "ratio_max": _r(max(ratios)) if ratios else None,
        "diameter_hops": hops,
        "mean_latency": _r(statistics.fmean(latencies)),
        "bound_formula": _r(hops * statistics.fmean(latencies) + blob / s.bandwidth),
    }


def _payload(sim: Simulation, honest: list[SimNode]) -> dict[str, Any]:
    worst = 1.0
    for node in honest:
        for sha, extra in node.dups.items():
            worst = max(worst, 1 + extra / sim.world.blobs[sha].size)
    return {
        "duplicate_bytes": sum(n.duplicate for n in honest),
        "payload_bytes": sum(n.payload for n in honest),
        "max_ratio_per_blob": _r(worst),
        "max_ratio_per_node": _r(
            max((n.payload / n.payload_blobs for n in honest if n.payload_blobs), default=1.0)
        ),
    }


def bad_in_order(sim: Simulation, node: SimNode) -> int:
    """Adversarial commits in ``node``'s order: forged, invalid or oversized ones, and twins
    of an equivocation whose other twin the node holds."""
    order = set(node.core.order.commits)
    twins = sim.world.twins
    exposed = {c for c in order & twins.keys() if node.core.commit(twins[c]) is not None}
    return len(order & sim.world.bad) + len(exposed)


def _adversaries(sim: Simulation, honest: list[SimNode]) -> dict[str, Any]:
    honest_names = {n.name for n in honest}
    return {
        "bad_in_honest_orders": sum(bad_in_order(sim, n) for n in honest),
        "equivocations_seen": sum(len(n.core.order.flagged) > 0 for n in honest),
        "garbage_seen": sum(n.core.statistics().garbage for n in honest),
        "disconnects": len(sim.disconnects),
        "honest_disconnects": [
            [_r(t), a, b, why]
            for t, a, b, why in sim.disconnects
            if a in honest_names and b in honest_names
        ],
        "local_rejections": sim.rejected,
    }


def _traffic(sim: Simulation) -> dict[str, int]:
    return {
        "messages_sent": sum(n.messages for n in sim.nodes),
        "bytes_sent": sum(n.sent for n in sim.nodes),
        "bytes_received": sum(n.received for n in sim.nodes),
    }


def _timeline(sim: Simulation) -> dict[str, list[Any]]:
    return {
        "commits": sorted(_r(sim.world.published[c]) for c in sim.authored),
        "churn": [[_r(s.at), s.node, s.online] for s in sim.plan.steps if isinstance(s, SetOnline)],
        "partitions": [[_r(p.start), _r(p.end), p.fraction] for p in sim.s.partitions],
    }


def _per_node(sim: Simulation) -> dict[str, list[Any]]:
    return {
        "role": [n.role for n in sim.nodes],
        "messages": [n.messages for n in sim.nodes],
        "sent": [n.sent for n in sim.nodes],
        "received": [n.received for n in sim.nodes],
        "duplicate": [n.duplicate for n in sim.nodes],
        "converged_at": [_r(n.changed_at) for n in sim.nodes],
    }


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True, indent=1) + "\n"


def summary(report: dict[str, Any]) -> str:
    c, p, pay, adv = (report[k] for k in ("convergence", "propagation", "payload", "adversaries"))
    lines = [
        f"converged: {c['converged']} ({c['distinct_digests']} digest(s), "
        f"{c['distinct_roots']} set root(s)) at t={c['converged_at']}s; "
        f"order length {c['order_length']}, {c['commits_signed']} commits signed "
        f"({c['commits_refused']} refused as stale rebases)",
        f"propagation: median {p['delay_median']}s, max {p['delay_max']}s; lower bound median "
        f"{p['bound_median']}s (ratio median {p['ratio_median']}, max {p['ratio_max']}); "
        f"diameter {p['diameter_hops']} hops x {p['mean_latency']}s + size/bw = "
        f"{p['bound_formula']}s",
        f"payload: {pay['payload_bytes']} B received, {pay['duplicate_bytes']} B duplicate, "
        f"max per blob {pay['max_ratio_per_blob']}x",
        f"adversaries: {adv['bad_in_honest_orders']} bad commits in honest orders, "
        f"{adv['garbage_seen']} garbage events, {len(adv['honest_disconnects'])} honest "
        f"disconnects",
    ]
    return "\n".join(lines)


def title(report: dict[str, Any]) -> str:
    """The seed and the scenario's main knobs, in two lines."""
    s = report["scenario"]
    links = f" degree {s['degree']}" if s["topology"] in ("random-regular", "small-world") else ""
    churn = s["churn"]["fraction"] + s["churn"]["late"]
    return (
        f"seed {report['seed']}: {s['nodes']} nodes, {s['topology']}{links}, mode {s['mode']}\n"
        f"{s['commits']} commits by {s['authors']} authors every {s['commit_interval']} s, "
        f"latency {s['latency']} s, loss {s['loss']}, {len(s['partitions'])} partition(s), "
        f"churn {churn:g}, {sum(s['adversaries'].values())} adversaries"
    )


def figure(report: dict[str, Any]) -> Figure:
    """The report's figure, not yet saved (``plot`` saves and closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = report["nodes"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    fig.suptitle(title(report), fontsize=10)
    _timeline_axes(axes[0][0], report)
    axes[0][1].plot(sorted(nodes["converged_at"]))
    axes[0][1].set(
        title="time to final composite per node", xlabel="node (sorted)", ylabel="virtual s"
    )
    axes[1][0].plot(nodes["sent"], label="sent", linewidth=0.7)
    axes[1][0].plot(nodes["received"], label="received", linewidth=0.7)
    axes[1][0].set(title="bytes per node", xlabel="node", ylabel="bytes")
    axes[1][0].legend()
    axes[1][1].bar(range(len(nodes["duplicate"])), nodes["duplicate"])
    axes[1][1].set(title="duplicate payload bytes per node", xlabel="node", ylabel="bytes")
    fig.tight_layout()
    return fig


def _timeline_axes(ax: Axes, report: dict[str, Any]) -> None:
    """Distinct digests over time; partitions shaded, commits ticked, churn marked."""
    end = report["scenario"]["duration"]
    t, k = zip(*report["samples"], strict=True) if report["samples"] else ((), ())
    ax.step((*t, end), (*k, k[-1] if k else 0), where="post", label="digests")
    ax.set(title="distinct composite digests (online honest nodes)", xlabel="virtual s")
    ax.set(ylabel="digests", xlim=(0, end), ylim=(0, 1.4 * max(k, default=1) + 0.5))
    timeline = report["timeline"]
    for j, (start, stop, _) in enumerate(timeline["partitions"]):
        label = "partition" if j == 0 else "_partition"
        ax.axvspan(start, min(stop, end), color="tab:orange", alpha=0.2, label=label)
    axis = ax.get_xaxis_transform()  # x in seconds, y from 0 (bottom) to 1 (top)
    if timeline["commits"]:
        ax.vlines(timeline["commits"], 0, 0.05, transform=axis, colors="k", lw=0.6, label="commit")
    events = Counter((at, online) for at, _, online in timeline["churn"])
    for online, marker, colour in ((False, "v", "tab:red"), (True, "^", "tab:green")):
        times = sorted(at for at, up in events if up is online)
        if not times:
            continue
        name = "node(s) up" if online else "node(s) down"
        y = 0.9 if online else 0.95
        ax.plot(times, [y] * len(times), marker, color=colour, transform=axis, label=name)
        for at in times:
            ax.text(at, y - 0.06, str(events[at, online]), transform=axis, fontsize=7, ha="center")
    ax.legend(fontsize=7, loc="center right")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(report)
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)
