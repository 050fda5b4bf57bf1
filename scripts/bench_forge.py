#!/usr/bin/env python
"""Reproduce MedForge's comparison offline: real medical data from wheels, MiniLM as the base.

Three settings, each with >= 3 institutions (issue 6, "Benchmark"):

- ``tasks``: task-incremental like the paper: each institution has its own task and class
  names, the blocks of one ICD-10-CM chapter (neoplasms 2, circulatory 9, respiratory 10);
- ``skew``: one task (ICD-10-CM chapters 1-21 as classes) dealt to 3 institutions by
  Dirichlet(0.3) label skew; each trains and distils on the classes it holds (``train_plugin``
  refuses a class with no example), its distilled labels index the task's full class list;
- ``heart``: the four real UCI Heart Disease hospitals, one institution (and test set) per site,
  as the text lines ``merge.pipeline.datasets.heart_disease`` writes.

Rows: zero-shot base, each single plugin, pooled training (one plugin on the union of the
training data, ``n x steps`` steps: the same total compute; breaks privacy), uniform average
(exact mean of ΔW, ``fold.uniform_average("stack")``), uniform mixture (mean of the plugins'
probabilities), PEFT ``add_weighted_adapter`` ``linear`` and ``cat`` (weights 1/n), and MedForge's
incremental fold with searched coefficients (``node.forge.author.coefficients``, the search a
commit runs, on the distilled sets; commits in arrival order) in each mode: Fusion, Mixture,
Stack. Orders: every permutation for 3 institutions, the n cyclic rotations beyond
(``--orders``). Order-independent rows are computed once per seed. Every row is scored through
the same DualEncoder path (``merge.pipeline.evaluate``).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_forge.py --quick   # CI, < 2 min
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_forge.py           # 3 seeds, 3 settings

Writes ``bench_forge-<tag>.{json,md,png}`` under ``bench-results/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from merge.base_shapes import shapes_of
from merge.fold import Composite, apply, empty, uniform_average
from merge.lora import LoraAdapter, load_adapter
from merge.pipeline.backends import DualEncoder, load_backend
from merge.pipeline.datasets import (
    HEART_SITES,
    Examples,
    dirichlet_split,
    heart_disease,
    icd10_blocks,
    icd10_chapters,
    stratified_split,
)
from merge.pipeline.distill import DistillConfig, distill
from merge.pipeline.evaluate import model_probs
from merge.pipeline.metrics import Metrics, classification_metrics
from merge.pipeline.search import DistilledSet
from merge.pipeline.train import TrainConfig, train_plugin
from merge.spec import Limits, SearchSettings
from node.forge.author import coefficients

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("tasks", "skew", "heart")
TASK_CHAPTERS = (("neoplasms", "2"), ("circulatory", "9"), ("respiratory", "10"))
SKEW_CHAPTERS = tuple(str(c) for c in range(1, 22))  # 22 ("special purposes") has 5 codes
MODES = ("fusion", "mixture", "stack")
TEST_FRACTION = 0.3
BASE, POOLED, UNIFORM, UMIX = (
    "zero-shot base",
    "pooled (breaks privacy)",
    "uniform average",
    ("uniform mixture"),
)
PEFT_ROWS = {"linear": "PEFT linear", "cat": "PEFT cat"}
SEARCHED = {"fusion": "Fusion", "mixture": "Mixture", "stack": "Stack"}


@dataclass(frozen=True)
class Sizes:
    """How big a run is; ``--quick`` and the full run differ only here."""

    seeds: int = 3
    settings: tuple[str, ...] = SETTINGS
    per_class_blocks: int = 24  # descriptions per ICD-10 block (task-incremental)
    per_class_chapters: int = 36  # descriptions per ICD-10 chapter (label skew)
    heart_fraction: float = 1.0  # fraction of each hospital's patients used
    steps: int = 30  # LoRA steps per plugin (pooled: n x steps)
    ipc: int = 2  # distilled inputs per class
    distill_steps: int = 30
    budget: int = 20  # coefficient-search evaluations per commit
    max_test: int = 100  # test records per task (seeded subsample)
    orders: str = "auto"  # "auto" | "all" | "cyclic" | an int (the first k permutations)


QUICK = Sizes(
    seeds=1,
    settings=("tasks",),
    per_class_blocks=5,
    per_class_chapters=8,
    heart_fraction=0.25,
    steps=4,
    ipc=1,
    distill_steps=3,
    budget=4,
    max_test=24,
    orders="1",
)


@dataclass(frozen=True)
class Institution:
    name: str  # also the task name in the task-incremental and heart settings
    task: str
    train: Examples  # what it trains and distils on (only the classes it holds)
    classes: tuple[str, ...]  # the task's class list (its distilled labels index this)


@dataclass(frozen=True)
class Setting:
    name: str
    institutions: tuple[Institution, ...]
    tests: Mapping[str, Examples]  # task -> held-out records
    pooled: Examples


Probs = dict[str, torch.Tensor]  # task -> [n, classes]


def say(t0: float, msg: str) -> None:
    print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)


# --- data ----------------------------------------------------------------------------------


def local_view(records: Examples) -> Examples:
    """Only the classes present (labels re-indexed): what an institution can train on."""
    present = [c for c, n in enumerate(records.counts()) if n > 0]
    index = {c: i for i, c in enumerate(present)}
    labels = tuple(index[y] for y in records.labels)
    return Examples(records.items, labels, tuple(records.classes[c] for c in present))


def union(parts: Sequence[Examples]) -> Examples:
    """All records, labelled in the joint class list (first occurrence order)."""
    classes = tuple(dict.fromkeys(c for p in parts for c in p.classes))
    index = {c: i for i, c in enumerate(classes)}
    items = tuple(x for p in parts for x in p.items)
    labels = tuple(index[p.classes[y]] for p in parts for y in p.labels)
    return Examples(items, labels, classes)


def cap(records: Examples, n: int, seed: int) -> Examples:
    """A seeded subsample of at most ``n`` records (in original order)."""
    if len(records) <= n:
        return records
    g = torch.Generator().manual_seed(seed)
    return records.subset(sorted(torch.randperm(len(records), generator=g)[:n].tolist()))


def fraction(records: Examples, f: float, seed: int) -> Examples:
    return records if f >= 1 else cap(records, max(1, round(len(records) * f)), seed)


def build_tasks(sizes: Sizes, seed: int) -> Setting:
    insts, tests = [], {}
    for task, chapter in TASK_CHAPTERS:
        records = icd10_blocks(chapter, per_class=sizes.per_class_blocks, seed=seed)
        train, test = stratified_split(records, TEST_FRACTION, seed)
        insts.append(Institution(task, task, train, records.classes))
        tests[task] = cap(test, sizes.max_test, seed)
    return Setting("tasks", tuple(insts), tests, union([i.train for i in insts]))


def build_skew(sizes: Sizes, seed: int) -> Setting:
    records = icd10_chapters(per_class=sizes.per_class_chapters, chapters=SKEW_CHAPTERS, seed=seed)
    train, test = stratified_split(records, TEST_FRACTION, seed)
    parts = dirichlet_split(train, 3, 0.3, seed)
    task = "icd10-chapters"
    insts = tuple(
        Institution(f"inst{k + 1}", task, local_view(p), records.classes)
        for k, p in enumerate(parts)
    )
    return Setting("skew", insts, {task: cap(test, sizes.max_test, seed)}, train)


def build_heart(sizes: Sizes, seed: int) -> Setting:
    insts, tests = [], {}
    for site in HEART_SITES:
        records = fraction(heart_disease(site), sizes.heart_fraction, seed)
        train, test = stratified_split(records, TEST_FRACTION, seed)
        insts.append(Institution(site, site, train, records.classes))
        tests[site] = cap(test, sizes.max_test, seed)
    return Setting("heart", tuple(insts), tests, union([i.train for i in insts]))


BUILDERS: dict[str, Callable[[Sizes, int], Setting]] = {
    "tasks": build_tasks,
    "skew": build_skew,
    "heart": build_heart,
}


def arrival_orders(names: Sequence[str], how: str) -> list[tuple[str, ...]]:
    """``auto``: every permutation for <= 3 institutions, else the cyclic rotations."""
    perms = list(itertools.permutations(names))
    if how == "auto":
        how = "all" if len(names) <= 3 else "cyclic"
    if how == "all":
        return perms
    if how == "cyclic":
        return [tuple(names[k:]) + tuple(names[:k]) for k in range(len(names))]
    return perms[: int(how)]


# --- plugins -------------------------------------------------------------------------------


def train(
    backend: DualEncoder, records: Examples, task: str, out: Path, steps: int, seed: int
) -> LoraAdapter:
    """A plugin on all of ``records`` (no validation split: the benchmark has a test set)."""
    config = TrainConfig(steps=steps, seed=seed, val_fraction=0.0, progress=False)
    train_plugin(backend, records, task=task, out=out, config=config)
    return load_adapter(out, base=backend.fingerprint, limits=Limits(), name=out.name)


def summary_set(backend: DualEncoder, inst: Institution, sizes: Sizes, seed: int) -> DistilledSet:
    """The institution's distilled set, labels re-indexed into the task's class list."""
    cfg = DistillConfig(ipc=sizes.ipc, steps=sizes.distill_steps, seed=seed, progress=False)
    d = distill(backend, inst.train, task=inst.task, config=cfg).distilled
    index = torch.tensor([inst.classes.index(c) for c in d.classes], dtype=torch.int64)
    return DistilledSet(d.inputs, index[d.labels], inst.classes)


def peft_merges(backend: DualEncoder, dirs: Sequence[Path], work: Path) -> dict[str, LoraAdapter]:
    """PEFT ``add_weighted_adapter`` (weights 1/n) over the plugins, saved by PEFT and read
    back with the library's loader (as a node would read them)."""
    from peft import PeftModel

    model: Any = PeftModel.from_pretrained(
        copy.deepcopy(backend.model), str(dirs[0]), adapter_name="a0"
    )
    for k, d in enumerate(dirs[1:], start=1):
        model.load_adapter(str(d), adapter_name=f"a{k}")
    names = [f"a{k}" for k in range(len(dirs))]
    shapes = shapes_of(backend).modules  # PEFT's files declare no base: the shapes check it
    out = {}
    for kind, row in PEFT_ROWS.items():
        model.add_weighted_adapter(
            names, [1.0 / len(dirs)] * len(dirs), kind, combination_type=kind
        )
        model.save_pretrained(str(work / "peft"), selected_adapters=[kind])  # -> peft/<kind>/
        out[row] = load_adapter(
            work / "peft" / kind,
            base=backend.fingerprint,
            limits=Limits(),
            shapes=shapes,
            name=f"peft-{kind}",
        )
    return out


# --- scoring -------------------------------------------------------------------------------


def probs_of(
    backend: DualEncoder, model: LoraAdapter | Composite | None, setting: Setting
) -> Probs:
    return {t: model_probs(backend, model, d, d.classes) for t, d in setting.tests.items()}


def mixture_probs(c: Composite, singles: Mapping[str, Probs]) -> Probs:
    """``Σ λ_j P_j`` from the plugins' cached probabilities (what ``model_probs`` computes)."""
    tasks = next(iter(singles.values())).keys()
    return {
        t: sum(
            (lam * singles[m.name][t] for lam, m in zip(c.weights, c.members, strict=True)),
            torch.zeros_like(singles[c.members[0].name][t]),
        )
        for t in tasks
    }


def scores(probs: Probs, setting: Setting) -> dict[str, dict[str, float]]:
    """``{task: {accuracy, auc}}`` plus ``"mean"`` over tasks (each task counts once)."""
    out: dict[str, dict[str, float]] = {}
    for t, p in probs.items():
        m: Metrics = classification_metrics(p, setting.tests[t].label_tensor())
        out[t] = {"accuracy": m.accuracy, "auc": m.auc}
    out["mean"] = {k: nanmean([v[k] for v in out.values()]) for k in ("accuracy", "auc")}
    return out


def nanmean(xs: Sequence[float]) -> float:
    """Mean of the defined values (AUC is NaN on a test set holding one class)."""
    good = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(good) if good else math.nan


def forge(
    backend: DualEncoder,
    mode: str,
    order: Sequence[str],
    adapters: Mapping[str, LoraAdapter],
    data: Mapping[str, DistilledSet],
    search: SearchSettings,
) -> tuple[Composite, list[tuple[float, float]]]:
    """Commit the plugins in arrival order, each searched against the head before it."""
    head, coeffs = empty(mode), []
    seen: list[DistilledSet] = []  # the tasks merged so far
    for name in order:
        result = coefficients(backend, head, adapters[name], seen, data[name], search)
        head = apply(head, adapters[name], result.coeffs)
        coeffs.append(result.coeffs)
        seen.append(data[name])
    return head, coeffs


# --- one seed of one setting ---------------------------------------------------------------


def run_seed(
    backend: DualEncoder, name: str, sizes: Sizes, seed: int, work: Path, t0: float
) -> list[dict[str, Any]]:
    """Every row's scores for one seed: order-independent rows once, searched rows per order."""
    setting = BUILDERS[name](sizes, seed)
    insts = setting.institutions
    say(
        t0,
        f"{name} seed {seed}: {len(insts)} institutions, train sizes "
        f"{[len(i.train) for i in insts]}, test sizes {[len(d) for d in setting.tests.values()]}",
    )
    adapters: dict[str, LoraAdapter] = {}
    for inst in insts:
        adapters[inst.name] = train(
            backend, inst.train, inst.task, work / inst.name, sizes.steps, seed
        )
        say(t0, f"  trained plugin {inst.name} ({sizes.steps} steps)")
    pooled = train(
        backend, setting.pooled, "pooled", work / "pooled", sizes.steps * len(insts), seed
    )
    say(t0, f"  trained pooled plugin ({sizes.steps * len(insts)} steps)")
    data = {i.name: summary_set(backend, i, sizes, seed) for i in insts}
    say(t0, f"  distilled {sizes.ipc} per class for each institution")
    rows = fixed_rows(backend, setting, adapters, pooled, work, seed)
    say(t0, "  scored the order-independent rows")
    singles = {n: r["probs"] for n, r in rows.items() if n in adapters}
    samples = [sample(seed, None, label_row(n, setting), r["scores"]) for n, r in rows.items()]
    search = SearchSettings(budget=sizes.budget, seed=seed)
    for order in arrival_orders([i.name for i in insts], sizes.orders):
        samples += searched_rows(backend, setting, order, adapters, data, singles, search, seed)
        say(
            t0,
            f"  order {' > '.join(order)}: "
            + ", ".join(
                f"{s['row']} {s['scores']['mean']['accuracy']:.3f}" for s in samples[-len(MODES) :]
            ),
        )
    return samples


def label_row(name: str, setting: Setting) -> str:
    return f"single: {name}" if name in {i.name for i in setting.institutions} else name


def sample(
    seed: int, order: Sequence[str] | None, row: str, sc: Any, **extra: Any
) -> dict[str, Any]:
    return {
        "seed": seed,
        "order": list(order) if order else None,
        "row": row,
        "scores": sc,
        **extra,
    }


def fixed_rows(
    backend: DualEncoder,
    setting: Setting,
    adapters: Mapping[str, LoraAdapter],
    pooled: LoraAdapter,
    work: Path,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Base, singles, pooled, uniform average / mixture and the PEFT merges."""
    models: dict[str, LoraAdapter | Composite | None] = {BASE: None, **adapters, POOLED: pooled}
    models[UNIFORM] = uniform_average("stack", list(adapters.values()))
    models.update(peft_merges(backend, [work / n for n in adapters], work))
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        p = probs_of(backend, model, setting)
        out[name] = {"probs": p, "scores": scores(p, setting)}
    singles = {n: out[n]["probs"] for n in adapters}
    umix = uniform_average("mixture", list(adapters.values()))
    p = mixture_probs(umix, singles)
    out[UMIX] = {"probs": p, "scores": scores(p, setting)}
    return out


def searched_rows(
    backend: DualEncoder,
    setting: Setting,
    order: Sequence[str],
    adapters: Mapping[str, LoraAdapter],
    data: Mapping[str, DistilledSet],
    singles: Mapping[str, Probs],
    search: SearchSettings,
    seed: int,
) -> list[dict[str, Any]]:
    out = []
    for mode in MODES:
        c, coeffs = forge(backend, mode, order, adapters, data, search)
        p = mixture_probs(c, singles) if mode == "mixture" else probs_of(backend, c, setting)
        out.append(sample(seed, order, SEARCHED[mode], scores(p, setting), coeffs=coeffs))
    return out


# --- aggregation and report ----------------------------------------------------------------


def row_order(setting: str, samples: Sequence[dict[str, Any]]) -> list[str]:
    singles = list(dict.fromkeys(s["row"] for s in samples if s["row"].startswith("single: ")))
    return [BASE, *singles, POOLED, UNIFORM, UMIX, *PEFT_ROWS.values(), *SEARCHED.values()]


def mean_sd(xs: Sequence[float]) -> dict[str, float]:
    good = [x for x in xs if not math.isnan(x)]
    if not good:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    sd = statistics.stdev(good) if len(good) > 1 else 0.0
    return {"mean": statistics.fmean(good), "sd": sd, "n": len(good)}


def summarize(samples: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{row: {task: {metric: {mean, sd, n}}}}`` over seeds (and orders)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in dict.fromkeys(s["row"] for s in samples):
        mine = [s["scores"] for s in samples if s["row"] == row]
        out[row] = {
            t: {k: mean_sd([m[t][k] for m in mine]) for k in ("accuracy", "auc")} for t in mine[0]
        }
    return out


def goals(summary: Mapping[str, Any], metric: str = "accuracy") -> dict[str, Any]:
    """The issue's goal, per searched mode, on the mean over tasks."""
    mean = {row: v["mean"][metric]["mean"] for row, v in summary.items()}
    singles = {r: x for r, x in mean.items() if r.startswith("single: ")}
    out: dict[str, Any] = {}
    for row in SEARCHED.values():
        out[row] = {
            "mean": mean[row],
            "beats_every_single": all(mean[row] > x for x in singles.values()),
            "margin_over_best_single": mean[row] - max(singles.values()),
            ">=_uniform_average": mean[row] >= mean[UNIFORM],
            "minus_uniform_average": mean[row] - mean[UNIFORM],
            "within_2_points_of_pooled": mean[POOLED] - mean[row] <= 0.02,
            "minus_pooled": mean[row] - mean[POOLED],
        }
    return out


def cell(v: Mapping[str, float]) -> str:
    return "n/a" if math.isnan(v["mean"]) else f"{v['mean']:.3f} ± {v['sd']:.3f}"


def markdown(name: str, summary: Mapping[str, Any], rows: Sequence[str], n: str) -> str:
    tasks = [t for t in summary[BASE] if t != "mean"]
    head = [f"{t} acc" for t in tasks] + [f"{t} AUC" for t in tasks] + ["mean acc", "mean AUC"]
    lines = [
        f"### {name} ({n})",
        "",
        "| row | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    for row in rows:
        v = summary[row]
        cells = [cell(v[t]["accuracy"]) for t in tasks] + [cell(v[t]["auc"]) for t in tasks]
        cells += [f"**{cell(v['mean']['accuracy'])}**", cell(v["mean"]["auc"])]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_lines(g: Mapping[str, Any], metric: str) -> str:
    def yes(b: bool) -> str:
        return "yes" if b else "**no**"

    lines = [f"Goal ({metric}, mean over tasks):", ""]
    for row, v in g.items():
        lines.append(
            f"- {row}: {v['mean']:.3f}; beats every single plugin: {yes(v['beats_every_single'])} "
            f"({v['margin_over_best_single']:+.3f} vs best); >= uniform average: "
            f"{yes(v['>=_uniform_average'])} ({v['minus_uniform_average']:+.3f}); within 2 points "
            f"of pooled: {yes(v['within_2_points_of_pooled'])} ({v['minus_pooled']:+.3f})"
        )
    return "\n".join(lines)


def plot(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows, summary = results[name]["rows"], results[name]["summary"]
        accs = [summary[r]["mean"]["accuracy"] for r in rows]
        colors = [
            "tab:orange" if r in SEARCHED.values() else "tab:gray" if r == POOLED else "tab:blue"
            for r in rows
        ]
        ax.barh(
            range(len(rows)), [a["mean"] for a in accs], xerr=[a["sd"] for a in accs], color=colors
        )
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("accuracy, mean over tasks (± sd over seeds and orders)")
        ax.set_title(f"{name}: {results[name]['runs']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, tag: str, results: dict[str, Any], meta: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# bench_forge ({tag})", "", json.dumps(meta["sizes"]), ""]
    for name, r in results.items():
        md += [
            markdown(name, r["summary"], r["rows"], r["runs"]),
            "",
            goal_lines(r["goals"]["accuracy"], "accuracy"),
            "",
            goal_lines(r["goals"]["auc"], "AUC"),
            "",
        ]
    (out / f"bench_forge-{tag}.md").write_text("\n".join(md))
    (out / f"bench_forge-{tag}.json").write_text(
        json.dumps({**meta, "settings": results}, indent=1, default=float) + "\n"
    )
    plot(results, out / f"bench_forge-{tag}.png")
    return out / f"bench_forge-{tag}.md"


def finish(name: str, samples: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    summary = summarize(samples)
    seeds = len({s["seed"] for s in samples})
    orders = len({tuple(s["order"]) for s in samples if s["order"]})
    return {
        "rows": row_order(name, samples),
        "runs": f"{seeds} seed(s) x {orders} order(s)",
        "summary": summary,
        "goals": {m: goals(summary, m) for m in ("accuracy", "auc")},
        "seconds": seconds,
        "samples": samples,
    }


# --- main ----------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Sizes]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: tiny data, 1 seed, 1 order")
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--orders", default=None, help="auto | all | cyclic | N")
    ap.add_argument("--tag", default=None, help="output name (default: quick/full[-settings])")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results")
    ap.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="no run: re-summarize earlier JSON outputs (e.g. one per setting) "
        "into one table, plot and JSON named --tag",
    )
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    overrides = {k: getattr(args, k) for k in ("seeds", "steps", "budget", "orders")}
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    if args.settings:
        sizes = replace(sizes, settings=tuple(args.settings))
    return args, sizes


def combine(paths: Sequence[Path], out: Path, tag: str) -> Path:
    """One report from runs made separately (e.g. the three settings in parallel)."""
    results: dict[str, Any] = {}
    metas = []
    for p in paths:
        data = json.loads(p.read_text())
        metas.append({k: v for k, v in data.items() if k != "settings"})
        for name, r in data["settings"].items():
            results[name] = finish(name, r["samples"], r["seconds"])
    meta = {"tag": tag, "sizes": metas[0]["sizes"], "combined_from": metas}
    return write_outputs(out, tag, results, meta)


def main(argv: Sequence[str] | None = None) -> None:
    # Read by huggingface_hub on import: nothing above loads it (the backends import
    # transformers when a model is loaded, PEFT is imported by ``peft_merges``).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, sizes = parse(argv)
    if args.combine:
        print(combine(args.combine, args.out, args.tag or "combined").read_text())
        return
    torch.set_num_threads(1)  # measured: MiniLM on this VM is several times faster on one
    t0 = time.perf_counter()
    default = "quick" if args.quick else "full"
    tag = args.tag or (
        default
        if sizes.settings == Sizes().settings or args.quick
        else f"{default}-{'-'.join(sizes.settings)}"
    )
    backend = load_backend("text", None)
    say(t0, f"loaded MiniLM ({backend.fingerprint[:12]}); sizes {asdict(sizes)}")
    meta = {"tag": tag, "sizes": asdict(sizes), "torch_threads": 1, "base": backend.name}
    results: dict[str, Any] = {}
    for name in sizes.settings:
        samples: list[dict[str, Any]] = []
        started = time.perf_counter()
        for seed in range(sizes.seeds):
            with tempfile.TemporaryDirectory(prefix=f"bench-forge-{name}-") as work:
                samples += run_seed(backend, name, sizes, seed, Path(work), t0)
            results[name] = finish(name, samples, time.perf_counter() - started)
            meta["seconds"] = time.perf_counter() - t0
            path = write_outputs(args.out, tag, results, meta)  # partial results survive
    say(t0, f"done in {time.perf_counter() - t0:.0f} s; wrote {path} (+ .json, .png)")
    print(path.read_text())


if __name__ == "__main__":
    main()
