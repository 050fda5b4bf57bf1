#!/usr/bin/env python
"""Reproduce MedForge's comparison offline: real medical data from wheels, MiniLM as the base.

Three settings, each with >= 3 institutions by default (issue 6, "Benchmark"):

- ``tasks``: task-incremental like the paper: each institution has its own task and class
  names, the blocks of one ICD-10-CM chapter (``--chapters``, default 2,9,10: neoplasms,
  circulatory, respiratory; any chapters of >= 2 blocks, one institution each);
- ``skew``: one task (ICD-10-CM chapters 1-21 as classes) dealt to ``--institutions`` (3) by
  Dirichlet(``--alpha`` 0.3) label skew; each trains and distils on the classes it holds
  (``train_plugin`` refuses a class with no example), its distilled labels index the task's
  full class list;
- ``heart``: the four real UCI Heart Disease hospitals, one institution (and test set) per site,
  as the text lines ``merge.pipeline.datasets.heart_disease`` writes, all four one task
  (``heart-disease``), as a consortium diagnosing one disease names it:
  the continual recipe's per-task parts (distillation on the member's own inputs, one head
  over the task's replayed sets, the prior correction) apply across hospitals.
  ``--heart-task site`` names each hospital's plugin a task of its own, as measured until
  2026-12-07 (the independent rows are the same either way: the class lists are).

Rows: zero-shot base, each single plugin, pooled training (one plugin on the union of the
training data, ``n x steps`` steps: the same total compute; breaks privacy), uniform average
(exact mean of ΔW, ``fold.uniform_average("stack")``), uniform mixture (mean of the plugins'
probabilities), PEFT ``add_weighted_adapter`` ``linear`` and ``cat`` (weights 1/n), and MedForge's
incremental fold with searched coefficients (``node.forge.author.coefficients``, the search a
commit runs, on the distilled sets; commits in arrival order) in each mode: Fusion, Mixture,
Stack. Orders: every permutation for 3 institutions, the n cyclic rotations beyond
(``--orders``). Order-independent rows are computed once per seed. Every row is scored through
the same DualEncoder path (``merge.pipeline.evaluate``).

Optional rows (``--rows``; the first three by default, the others cost a search or a training
per commit and order):

- ``distilled``: "pooled distilled sets (one plugin)", a diagnostic: one plugin trained only on
  the union of every institution's distilled set (``n x steps`` steps, like pooled). Near
  pooled, the distilled data holds the tasks and the merge is the bottleneck;
- ``shares``: "Mixture (shares)", the mixture searched as the new member's share of a convex
  mixture with a prior at the uniform share (``merge.pipeline.search.search_mixture_share``,
  ``--mixture-prior``): what a new mixture network searches (``SearchSettings.mixture_search``);
  "Mixture" is the paper's two-coefficient search (``--mixture-search paper``);
- ``continual``, ``continual-noreplay``: each plugin after the first trained on top of the
  composite it is committed onto (``merge.pipeline.train.Continual``), with or without a replay
  of the distilled sets merged so far, then searched as a commit; every mode (without replay
  a mixture member trains on the base alone: that is the "Mixture" row, not repeated).
  "continual" with replay is the network's default (``medforge train --home``);
- ``continual-searched``: continual stack with replay, coefficients searched anyway (a
  continual stack commit takes (1, 1), exactly sequential fine-tuning with rehearsal, unsearched:
  ``search_coeffs(trained_on_head=True)``; this row is what it is measured against);
- ``continual-rounds``: fusion and stack, every member committing ``--rounds`` times (default
  2) in the arrival order, each plugin continual with replay for ``steps // rounds`` steps:
  cyclical weight transfer, the same total steps in smaller, more frequent commits;
- ``per-module``: fusion and stack with one coefficient pair per module group
  (``SearchSettings.groups``, ``--module-groups``, default ``layer``).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_forge.py --quick   # CI, < 2 min
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_forge.py           # 3 seeds, 3 settings
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_forge.py --settings tasks --chapters 4,11,14

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from merge.base_shapes import shapes_of
from merge.fold import Composite, apply, empty, uniform_average
from merge.lora import LoraAdapter, load_adapter
from merge.pipeline.backends import DualEncoder, load_backend
from merge.pipeline.backends.base import cosine_logits
from merge.pipeline.datasets import (
    HEART_SITES,
    Examples,
    dirichlet_split,
    heart_disease,
    icd10_blocks,
    icd10_chapter_ids,
    icd10_chapters,
    stratified_split,
)
from merge.pipeline.distill import DistillConfig, Distilled, distill
from merge.pipeline.evaluate import model_probs
from merge.pipeline.metrics import Metrics, classification_metrics
from merge.pipeline.search import MIXTURE_PRIOR, SearchResult, TaskData, search_mixture_share
from merge.pipeline.train import TrainConfig, train_plugin
from merge.spec import Limits, SearchSettings
from node.forge.author import coefficients

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("tasks", "skew", "heart")
# ICD-10-CM chapter id -> the task's (and institution's) name in the tasks setting
CHAPTER_NAMES = {
    "1": "infectious",
    "2": "neoplasms",
    "3": "blood",
    "4": "endocrine",
    "5": "mental",
    "6": "nervous",
    "7": "eye",
    "8": "ear",
    "9": "circulatory",
    "10": "respiratory",
    "11": "digestive",
    "12": "skin",
    "13": "musculoskeletal",
    "14": "genitourinary",
    "15": "pregnancy",
    "16": "perinatal",
    "17": "congenital",
    "18": "symptoms",
    "19": "injury",
    "20": "external-causes",
    "21": "health-factors",
    "22": "special-purposes",
}
TASK_CHAPTERS = ("2", "9", "10")
SKEW_CHAPTERS = tuple(str(c) for c in range(1, 22))  # 22 ("special purposes") has 5 codes
MODES = ("fusion", "mixture", "stack")
TEST_FRACTION = 0.3
BATCH = TrainConfig().batch_size
BASE, POOLED, UNIFORM, UMIX = (
    "zero-shot base",
    "pooled (breaks privacy)",
    "uniform average",
    ("uniform mixture"),
)
DISTILLED = "pooled distilled sets (one plugin)"
PEFT_ROWS = {"linear": "PEFT linear", "cat": "PEFT cat"}
SEARCHED = {"fusion": "Fusion", "mixture": "Mixture", "stack": "Stack"}
SHARES = "Mixture (shares)"
# Optional row families (--rows); the defaults are cheap, the others train or search per order.
ROW_FAMILIES = (
    "distilled",
    "shares",
    "continual",
    "continual-noreplay",
    "continual-searched",
    "continual-rounds",
    "per-module",
)
# "continual" is what `medforge train --home` and the demo do: a plain run shows the
# network's default method beside the paper's
DEFAULT_ROWS = ("distilled", "shares", "continual")
GROUPINGS = ("layer", "target")
# CPU seconds per training step, by kind ("independent" | "continual"): the cost
# target (a continual plugin at most 1.5x an independent one at the same steps).
TRAIN_CPU: dict[str, list[float]] = {}


def continual_row(mode: str, replay: bool) -> str:
    return f"continual {'+ replay' if replay else 'no replay'}: {SEARCHED[mode]}"


def per_module_row(mode: str, grouping: str) -> str:
    return f"per-module ({grouping}): {SEARCHED[mode]}"


@dataclass(frozen=True)
class Sizes:
    """How big a run is and on which split; ``--quick`` and the full run differ only in size."""

    seeds: tuple[int, ...] = (0, 1, 2)
    settings: tuple[str, ...] = SETTINGS
    chapters: tuple[str, ...] = TASK_CHAPTERS  # tasks: one institution per ICD-10 chapter
    institutions: int = 3  # skew: how many institutions share the task
    alpha: float = 0.3  # skew: Dirichlet concentration (smaller: more skewed)
    per_class_blocks: int = 24  # descriptions per ICD-10 block (task-incremental)
    per_class_chapters: int = 36  # descriptions per ICD-10 chapter (label skew)
    heart_fraction: float = 1.0  # fraction of each hospital's patients used
    heart_task: str = "shared"  # "shared": one task for all hospitals; "site": one each
    steps: int = 30  # LoRA steps per plugin (pooled: n x steps)
    ipc: int = 2  # distilled inputs per class
    distill_steps: int = 30
    budget: int = 20  # coefficient-search evaluations per commit
    max_test: int = 100  # test records per task (seeded subsample)
    orders: str = "auto"  # "auto" | "all" | "cyclic" | an int (the first k permutations)
    rows: tuple[str, ...] = DEFAULT_ROWS  # optional row families (ROW_FAMILIES)
    mixture_prior: float = MIXTURE_PRIOR  # "Mixture (shares)": pseudo-samples at uniform
    module_groups: str = "layer"  # "per-module" rows: merge.groups grouping
    # continual rows: TrainConfig's continual knobs (None: TrainConfig's default), so an
    # ablation of the continual recipe needs no edit of the code
    lwf_weight: float | None = None
    lwf_replay_weight: float | None = None
    replay_weight: float | None = None
    whole_task: bool | None = None
    prior_correction: bool | None = None
    warm_start: bool | None = None
    # "continual-rounds" rows: each institution commits this many times, in the same order
    # every round, each plugin trained for steps // rounds (the same total steps)
    rounds: int = 2


QUICK = Sizes(
    seeds=(0,),
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
    name: str  # also the task name in the task-incremental setting (and heart, per site)
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


def chapter_task(chapter: str) -> str:
    return CHAPTER_NAMES.get(chapter, f"chapter-{chapter}")


def check_chapters(chapters: Sequence[str]) -> None:
    """Refuse, before any model loads, a split the tasks setting cannot run."""
    known = icd10_chapter_ids()
    if len(chapters) < 2 or len(set(chapters)) != len(chapters):
        raise ValueError(f"--chapters needs >= 2 distinct chapters, got {list(chapters)}")
    for c in chapters:
        if c not in known:
            raise ValueError(f"--chapters: {c!r} is not an ICD-10-CM chapter ({', '.join(known)})")
        blocks = len(icd10_blocks(c, per_class=1).classes)
        if blocks < 2:
            raise ValueError(f"--chapters: chapter {c} has {blocks} block(s); a task needs >= 2")


def check_trainable_split(insts: Sequence[Institution], hint: str) -> None:
    """Each institution must hold >= 2 classes and a batch of records."""
    for inst in insts:
        n, k = len(inst.train), len(inst.train.classes)
        if k < 2 or n < BATCH:
            raise ValueError(
                f"{inst.name} holds {n} records of {k} class(es) (needs >= {BATCH} of >= 2): "
                + hint
            )


def build_tasks(sizes: Sizes, seed: int) -> Setting:
    insts, tests = [], {}
    for chapter in sizes.chapters:
        task = chapter_task(chapter)
        records = icd10_blocks(chapter, per_class=sizes.per_class_blocks, seed=seed)
        train, test = stratified_split(records, TEST_FRACTION, seed)
        insts.append(Institution(task, task, train, records.classes))
        tests[task] = cap(test, sizes.max_test, seed)
    check_trainable_split(insts, "more descriptions per block (--per-class) or other chapters")
    return Setting("tasks", tuple(insts), tests, union([i.train for i in insts]))


def build_skew(sizes: Sizes, seed: int) -> Setting:
    records = icd10_chapters(per_class=sizes.per_class_chapters, chapters=SKEW_CHAPTERS, seed=seed)
    train, test = stratified_split(records, TEST_FRACTION, seed)
    parts = dirichlet_split(train, sizes.institutions, sizes.alpha, seed)
    task = "icd10-chapters"
    insts = tuple(
        Institution(f"inst{k + 1}", task, local_view(p), records.classes)
        for k, p in enumerate(parts)
    )
    check_trainable_split(insts, "a larger --alpha, fewer --institutions or another seed")
    return Setting("skew", insts, {task: cap(test, sizes.max_test, seed)}, train)


HEART_TASKS = ("site", "shared")
HEART_SHARED_TASK = "heart-disease"


def build_heart(sizes: Sizes, seed: int) -> Setting:
    """One institution per hospital, scored on its own held-out patients (one test set per
    site either way: the table shows what each hospital gets)."""
    insts, tests = [], {}
    for site in HEART_SITES:
        records = fraction(heart_disease(site), sizes.heart_fraction, seed)
        train, test = stratified_split(records, TEST_FRACTION, seed)
        task = HEART_SHARED_TASK if sizes.heart_task == "shared" else site
        insts.append(Institution(site, task, train, records.classes))
        tests[site] = cap(test, sizes.max_test, seed)
    return Setting("heart", tuple(insts), tests, union([i.train for i in insts]))


BUILDERS: dict[str, Callable[[Sizes, int], Setting]] = {
    "tasks": build_tasks,
    "skew": build_skew,
    "heart": build_heart,
}


def arrival_orders(names: Sequence[str], how: str) -> list[tuple[str, ...]]:
    """``auto``: every permutation for <= 3 institutions, else the cyclic rotations."""
    if how == "auto":
        how = "all" if len(names) <= 3 else "cyclic"
    if how == "cyclic":
        return [tuple(names[k:]) + tuple(names[:k]) for k in range(len(names))]
    perms = itertools.permutations(names)
    return list(perms) if how == "all" else list(itertools.islice(perms, int(how)))


# --- plugins -------------------------------------------------------------------------------


def train(
    backend: DualEncoder,
    records: Examples,
    task: str,
    out: Path,
    steps: int,
    seed: int,
    continual: Any = None,
    **knobs: Any,
) -> LoraAdapter:
    """A plugin on all of ``records`` (no validation split: the benchmark has a test set);
    ``continual``: a ``merge.pipeline.train.Continual`` to train on top of; ``knobs``: other
    ``TrainConfig`` fields."""
    config = TrainConfig(steps=steps, seed=seed, val_fraction=0.0, progress=False, **knobs)
    started = time.process_time()
    if continual is None:
        train_plugin(backend, records, task=task, out=out, config=config)
    else:
        train_plugin(backend, records, task=task, out=out, config=config, continual=continual)
    kind = "independent" if continual is None else "continual"
    TRAIN_CPU.setdefault(kind, []).append((time.process_time() - started) / steps)
    return load_adapter(out, base=backend.fingerprint, limits=Limits(), name=out.name)


def summary_set(backend: DualEncoder, inst: Institution, sizes: Sizes, seed: int) -> Distilled:
    """The institution's distilled set, labels re-indexed into the task's class list."""
    cfg = DistillConfig(ipc=sizes.ipc, steps=sizes.distill_steps, seed=seed, progress=False)
    d = distill(backend, inst.train, task=inst.task, config=cfg).distilled
    index = torch.tensor([inst.classes.index(c) for c in d.classes], dtype=torch.int64)
    return replace(d, labels=index[d.labels], classes=inst.classes)


def pooled_distilled(
    sets: Sequence[Distilled],
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Every distilled input, labelled in the joint class list (as ``union`` labels pooled)."""
    classes = tuple(dict.fromkeys(c for d in sets for c in d.classes))
    index = {c: i for i, c in enumerate(classes)}
    labels = [torch.tensor([index[d.classes[int(y)]] for y in d.labels]) for d in sets]
    return torch.cat([d.inputs for d in sets]), torch.cat(labels).to(torch.int64), classes


def train_on_distilled(
    backend: DualEncoder, sets: Sequence[Distilled], out: Path, steps: int, seed: int
) -> LoraAdapter:
    """The diagnostic plugin: trained on the pooled distilled sets only, with the training
    recipe of ``train_plugin`` (its LoRA config, optimiser, seeded batches and forked RNG;
    batches capped at the pool's size), scored against the joint class list."""
    from merge.pipeline import train as recipe  # its internals: a bench-only entry point

    inputs, labels, classes = pooled_distilled(sets)
    config = TrainConfig(steps=steps, seed=seed, batch_size=min(BATCH, len(labels)))
    targets = backend.encode_classes(classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = recipe._wrap(backend, config)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        batches = recipe._batches(len(labels), config.batch_size, seed)
        peft_model.train()
        for _ in range(steps):
            idx = next(batches)
            feats = backend.features(recipe._inner(peft_model), inputs[idx])
            loss = F.cross_entropy(cosine_logits(feats, targets, backend.logit_scale), labels[idx])
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            opt.step()
        peft_model.eval()
    recipe.save_adapter(peft_model, out, backend.fingerprint)
    return load_adapter(out, base=backend.fingerprint, limits=Limits(), name=out.name)


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


# One commit's search: (head, plugin, distilled sets merged so far, the plugin's own) -> result.
Searcher = Callable[[Composite, LoraAdapter, Sequence[Distilled], Distilled], SearchResult]
# The plugin an institution commits onto ``head`` (after the distilled sets ``seen``).
PluginFor = Callable[[str, Composite, Sequence[Distilled]], LoraAdapter]


@dataclass
class Forged:
    composite: Composite
    coeffs: list[tuple[float, float]] = field(default_factory=list)
    module_coeffs: list[Mapping[str, tuple[float, float]] | None] = field(default_factory=list)


def forge(
    mode: str,
    order: Sequence[str],
    plugin_for: PluginFor,
    data: Mapping[str, Distilled],
    searcher: Searcher,
    grouping: str | None = None,
) -> Forged:
    """Commit the plugins in arrival order, each searched against the head before it."""
    out = Forged(empty(mode))
    seen: list[Distilled] = []  # the tasks merged so far
    for name in order:
        adapter = plugin_for(name, out.composite, seen)
        result = searcher(out.composite, adapter, seen, data[name])
        out.composite = apply(out.composite, adapter, result.coeffs, _groups(result, grouping))
        out.coeffs.append(result.coeffs)
        out.module_coeffs.append(getattr(result, "module_coeffs", None))
        if all(d is not data[name] for d in seen):  # a member committing again reuses its set
            seen.append(data[name])
    return out


def _groups(result: SearchResult, grouping: str | None) -> Any:
    pairs = getattr(result, "module_coeffs", None)
    if grouping is None or not pairs:
        return None
    from merge.groups import ModuleCoeffs

    return ModuleCoeffs(grouping, pairs)


# --- one seed of one setting ---------------------------------------------------------------


@dataclass(frozen=True)
class SeedRun:
    """What every row of one seed shares: the split, plugins, distilled sets, cached probs."""

    backend: DualEncoder
    setting: Setting
    sizes: Sizes
    seed: int
    work: Path
    adapters: Mapping[str, LoraAdapter]
    data: Mapping[str, Distilled]
    singles: Mapping[str, Probs]

    @property
    def search(self) -> SearchSettings:
        return SearchSettings(budget=self.sizes.budget, seed=self.seed)

    def commit_search(
        self, settings: SearchSettings | None = None, trained_on_head: bool = False
    ) -> Searcher:
        """The search every commit runs (``node.forge.author.coefficients``); with
        ``trained_on_head`` (continual plugins, each trained on the head it goes onto), the
        one `medforge commit` runs for such a plugin: stack takes (1, 1) unsearched."""
        s, on = settings or self.search, trained_on_head
        return lambda head, a, seen, own: coefficients(self.backend, head, a, seen, own, s, on)

    def independent(self, name: str, head: Composite, seen: Sequence[Distilled]) -> LoraAdapter:
        return self.adapters[name]

    def score(self, c: Composite) -> dict[str, dict[str, float]]:
        """A composite of the independent plugins: a mixture from the cached probabilities."""
        known = c.mode == "mixture" and all(m.name in self.singles for m in c.members)
        p = mixture_probs(c, self.singles) if known else probs_of(self.backend, c, self.setting)
        return scores(p, self.setting)


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
    singles = {n: r["probs"] for n, r in rows.items() if n in adapters}
    run = SeedRun(backend, setting, sizes, seed, work, adapters, data, singles)
    if "distilled" in sizes.rows:
        rows[DISTILLED] = distilled_row(run)
    say(t0, "  scored the order-independent rows")
    samples = [sample(seed, None, label_row(n, setting), r["scores"]) for n, r in rows.items()]
    for order in arrival_orders([i.name for i in insts], sizes.orders):
        mine = searched_rows(run, order)
        for family in (f for f in sizes.rows if f in ORDER_ROWS):
            mine += ORDER_ROWS[family](run, order)
        samples += mine
        say(
            t0,
            f"  order {' > '.join(order)}: "
            + ", ".join(f"{s['row']} {s['scores']['mean']['accuracy']:.3f}" for s in mine),
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


def distilled_row(run: SeedRun) -> dict[str, Any]:
    """The diagnostic: one plugin on the union of the distilled sets (``n x steps`` steps)."""
    steps = run.sizes.steps * len(run.adapters)
    sets = list(run.data.values())
    plugin = train_on_distilled(run.backend, sets, run.work / "distilled", steps, run.seed)
    p = probs_of(run.backend, plugin, run.setting)
    return {"probs": p, "scores": scores(p, run.setting)}


def searched_rows(run: SeedRun, order: Sequence[str]) -> list[dict[str, Any]]:
    """Fusion, Mixture, Stack: the commits' own search, on the independent plugins."""
    out = []
    for mode in MODES:
        f = forge(mode, order, run.independent, run.data, run.commit_search())
        out.append(sample(run.seed, order, SEARCHED[mode], run.score(f.composite), coeffs=f.coeffs))
    return out


def shares_rows(run: SeedRun, order: Sequence[str]) -> list[dict[str, Any]]:
    """ "Mixture (shares)": the mixture searched as the new member's convex share."""

    def searcher(
        head: Composite, a: LoraAdapter, seen: Sequence[TaskData], own: TaskData
    ) -> SearchResult:
        data = [*seen, own]
        prior = run.sizes.mixture_prior
        return search_mixture_share(run.backend, head, a, data, run.search, prior=prior)

    f = forge("mixture", order, run.independent, run.data, searcher)
    return [sample(run.seed, order, SHARES, run.score(f.composite), coeffs=f.coeffs)]


# --- rows from the other engineers' APIs (issue 12) -----------------------------------------
#
# HOOK "continual with replay (each mode)" / "continual without replay": continual_rows,
# on merge.pipeline.train.Continual. HOOK "per-module coefficients": per_module_rows, on
# SearchSettings.groups and SearchResult.module_coeffs. Both import their APIs lazily, so the
# default rows run without them.


def continual_rows(
    run: SeedRun, order: Sequence[str], replay: bool, searched: bool = False
) -> list[dict[str, Any]]:
    """Each plugin after the first trains on top of the head it is committed onto (the
    first one is the independent plugin: an empty composite gives it nothing to build on),
    with a replay of the distilled sets merged so far or without; then the commit's search
    (a stack commit of a plugin trained on its head: (1, 1), unless ``searched``).
    A mixture member trains on the base (``Continual.of``), so without replay the mixture is
    the "Mixture" row exactly: that row is not repeated. With replay the mixture's commits
    search shares, as a new mixture network's do (so the row is what `medforge train --home`
    and `medforge commit` give a mixture network)."""
    from merge.pipeline.train import Continual

    out = []
    modes = ("stack",) if searched else MODES if replay else ("fusion", "stack")
    for mode in modes:
        tag = f"{mode}-{'replay' if replay else 'plain'}{'-searched' if searched else ''}"

        def plugin_for(
            name: str, head: Composite, seen: Sequence[Distilled], tag: str = tag
        ) -> LoraAdapter:
            if head.is_empty:
                return run.adapters[name]
            prefix = "-".join(order[: len(seen) + 1])
            base = Continual.of(head, seen if replay else [], parent=f"bench:{tag}:{prefix}")
            out_dir = run.work / "continual" / tag / prefix
            return continual_plugin(run, name, base, out_dir, run.sizes.steps)

        # a mixture network searches shares by default (SearchSettings.mixture_search)
        shares = replace(run.search, mixture_search="shares") if mode == "mixture" else None
        search = run.commit_search(shares, trained_on_head=not searched)
        f = forge(mode, order, plugin_for, run.data, search)
        row = (
            f"continual + replay, searched: {SEARCHED[mode]}"
            if searched
            else continual_row(mode, replay)
        )
        out.append(sample(run.seed, order, row, run.score(f.composite), coeffs=f.coeffs))
    return out


def rounds_rows(run: SeedRun, order: Sequence[str]) -> list[dict[str, Any]]:
    """Cyclical weight transfer (Chang et al. 2018) on the network: the arrival order repeated
    ``rounds`` times, every member committing a continual plugin (replay on) of
    ``steps // rounds`` steps onto the head each time; the first, onto the empty composite, an
    independent one of as many steps. Same total training steps as one round (and pooled)."""
    from merge.pipeline.train import Continual

    rounds = run.sizes.rounds
    steps = max(1, run.sizes.steps // rounds)
    schedule = [name for _ in range(rounds) for name in order]
    out = []
    for mode in ("fusion", "stack"):
        tag = f"{mode}-rounds{rounds}"
        count = itertools.count()

        def plugin_for(
            name: str,
            head: Composite,
            seen: Sequence[Distilled],
            tag: str = tag,
            count: Iterator[int] = count,
        ) -> LoraAdapter:
            k = next(count)
            out_dir = run.work / "continual" / tag / "-".join(schedule[: k + 1])
            base = None if head.is_empty else Continual.of(head, seen, parent=f"bench:{tag}:{k}")
            return continual_plugin(run, name, base, out_dir, steps)

        f = forge(mode, schedule, plugin_for, run.data, run.commit_search(trained_on_head=True))
        row = f"continual + replay, {rounds} rounds: {SEARCHED[mode]}"
        out.append(sample(run.seed, order, row, run.score(f.composite), coeffs=f.coeffs))
    return out


def continual_plugin(run: SeedRun, name: str, base: Any, out_dir: Path, steps: int) -> LoraAdapter:
    """Institution ``name``'s plugin on top of ``base`` (a ``Continual``; None: independent),
    with the continual knobs the command line set."""
    inst = next(i for i in run.setting.institutions if i.name == name)
    knobs = continual_knobs(run.sizes) if base is not None else {}
    return train(run.backend, inst.train, inst.task, out_dir, steps, run.seed, base, **knobs)


def continual_knobs(sizes: Sizes) -> dict[str, Any]:
    """The continual ``TrainConfig`` fields the command line set (the rest: its defaults)."""
    chosen = {
        "lwf_weight": sizes.lwf_weight,
        "lwf_replay_weight": sizes.lwf_replay_weight,
        "replay_weight": sizes.replay_weight,
        "whole_task": sizes.whole_task,
        "prior_correction": sizes.prior_correction,
        "warm_start": sizes.warm_start,
    }
    return {k: v for k, v in chosen.items() if v is not None}


def per_module_rows(run: SeedRun, order: Sequence[str]) -> list[dict[str, Any]]:
    """Fusion and stack with one pair per module group, refined after the scalar search."""
    grouping = run.sizes.module_groups
    settings = replace(run.search, groups=grouping)
    out = []
    for mode in ("fusion", "stack"):
        search = run.commit_search(settings)
        f = forge(mode, order, run.independent, run.data, search, grouping)
        row = per_module_row(mode, grouping)
        extra = {"coeffs": f.coeffs, "module_coeffs": [dict(m or {}) for m in f.module_coeffs]}
        out.append(sample(run.seed, order, row, run.score(f.composite), **extra))
    return out


def _has_continual() -> bool:
    from merge.pipeline import train as module

    return hasattr(module, "Continual")


def _has_groups() -> bool:
    return hasattr(SearchSettings(), "groups") and "module_coeffs" in {
        f.name for f in fields(SearchResult)
    }


HOOK_API = {
    "continual": "merge.pipeline.train.Continual",
    "continual-noreplay": "merge.pipeline.train.Continual",
    "continual-searched": "merge.pipeline.train.Continual",
    "continual-rounds": "merge.pipeline.train.Continual",
    "per-module": "SearchSettings.groups, SearchResult.module_coeffs",
}
HOOK_READY: dict[str, Callable[[], bool]] = {
    "continual": _has_continual,
    "continual-noreplay": _has_continual,
    "continual-searched": _has_continual,
    "continual-rounds": _has_continual,
    "per-module": _has_groups,
}
ORDER_ROWS: dict[str, Callable[[SeedRun, Sequence[str]], list[dict[str, Any]]]] = {
    "shares": shares_rows,
    "continual": lambda run, order: continual_rows(run, order, replay=True),
    "continual-noreplay": lambda run, order: continual_rows(run, order, replay=False),
    "continual-searched": lambda run, order: continual_rows(run, order, replay=True, searched=True),
    "continual-rounds": rounds_rows,
    "per-module": per_module_rows,
}


# --- aggregation and report ----------------------------------------------------------------


def is_searched(row: str) -> bool:
    """Rows made by the incremental fold with searched coefficients (the goal applies)."""
    return row in SEARCHED.values() or row == SHARES or row.startswith(("continual", "per-module"))


def row_order(setting: str, samples: Sequence[dict[str, Any]]) -> list[str]:
    present = list(dict.fromkeys(s["row"] for s in samples))
    singles = [r for r in present if r.startswith("single: ")]
    fixed = [BASE, *singles, POOLED, DISTILLED, UNIFORM, UMIX, *PEFT_ROWS.values()]
    searched = [*SEARCHED.values(), SHARES]
    known = [r for r in [*fixed, *searched] if r in present]
    return known + [r for r in present if r not in known]


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
    """The issue's goal, per searched row, on the mean over tasks."""
    mean = {row: v["mean"][metric]["mean"] for row, v in summary.items()}
    singles = {r: x for r, x in mean.items() if r.startswith("single: ")}
    out: dict[str, Any] = {}
    for row in (r for r in summary if is_searched(r)):
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
            "tab:orange"
            if is_searched(r)
            else "tab:gray"
            if r in (POOLED, DISTILLED)
            else "tab:blue"
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


def train_cost() -> dict[str, Any]:
    """Mean CPU seconds per step of each kind of plugin, and continual / independent."""
    out: dict[str, Any] = {k: statistics.fmean(v) for k, v in TRAIN_CPU.items()}
    if "independent" in out and "continual" in out:
        out["ratio"] = out["continual"] / out["independent"]
    return out


def write_outputs(out: Path, tag: str, results: dict[str, Any], meta: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# bench_forge ({tag})", "", json.dumps(meta["sizes"]), ""]
    if meta.get("train_cpu_per_step"):
        md += [f"Training CPU seconds per step: {json.dumps(meta['train_cpu_per_step'])}", ""]
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
    ap.add_argument(
        "--seeds", default=None, help="N (seeds 0..N-1) or a list: 3,4,5 (one seed: 7,)"
    )
    ap.add_argument(
        "--chapters", default=None, help="tasks: ICD-10-CM chapter ids, one institution each"
    )
    ap.add_argument("--institutions", type=int, default=None, help="skew: institutions")
    ap.add_argument("--alpha", type=float, default=None, help="skew: Dirichlet concentration")
    ap.add_argument("--steps", type=int, default=None, help="LoRA steps per plugin")
    ap.add_argument(
        "--rounds", type=int, default=None, help="continual-rounds rows: commits per member"
    )
    ap.add_argument("--budget", type=int, default=None, help="search evaluations per commit")
    ap.add_argument("--ipc", type=int, default=None, help="distilled inputs per class")
    ap.add_argument("--distill-steps", type=int, default=None)
    ap.add_argument("--per-class", type=int, default=None, help="tasks: descriptions per block")
    ap.add_argument("--max-test", type=int, default=None, help="test records per task")
    ap.add_argument(
        "--heart-task",
        choices=HEART_TASKS,
        default=None,
        help="heart: one shared task (shared, default) or a task per hospital (site)",
    )
    ap.add_argument("--orders", default=None, help="auto | all | cyclic | N")
    ap.add_argument(
        "--rows",
        default=None,
        help=f"optional row families, comma-separated, from {','.join(ROW_FAMILIES)} "
        f"(default {','.join(DEFAULT_ROWS)}; 'none' for none)",
    )
    ap.add_argument("--mixture-prior", type=float, default=None, help="Mixture (shares) prior")
    ap.add_argument("--module-groups", choices=GROUPINGS, default=None, help="per-module rows")
    ap.add_argument(
        "--lwf-weight", type=float, default=None, help="continual rows: TrainConfig.lwf_weight"
    )
    ap.add_argument(
        "--lwf-replay-weight",
        type=float,
        default=None,
        help="continual rows: TrainConfig.lwf_replay_weight",
    )
    ap.add_argument(
        "--replay-weight",
        type=float,
        default=None,
        help="continual rows: TrainConfig.replay_weight",
    )
    ap.add_argument(
        "--whole-task",
        choices=("on", "off"),
        default=None,
        help="continual rows: TrainConfig.whole_task (one head over a task's whole class list)",
    )
    ap.add_argument(
        "--prior-correction",
        choices=("on", "off"),
        default=None,
        help="continual rows: TrainConfig.prior_correction (logit-adjusted local loss; "
        "default: on for Fusion only)",
    )
    ap.add_argument(
        "--warm-start",
        choices=("on", "off"),
        default=None,
        help="continual rows: TrainConfig.warm_start (the LoRA starts on the composite: "
        "stack, each A on its ΔW's top singular directions; fusion, as its factors; "
        "default: on)",
    )
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
    try:
        sizes = replace(sizes, **overrides(args))
        check_sizes(sizes)
    except ValueError as e:
        ap.error(str(e))
    return args, sizes


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sizes the command line names (``None``: the preset's)."""
    plain = (
        "steps",
        "budget",
        "ipc",
        "distill_steps",
        "max_test",
        "institutions",
        "alpha",
        "lwf_weight",
        "lwf_replay_weight",
        "replay_weight",
        "rounds",
        "heart_task",
    )
    out = {k: getattr(args, k) for k in plain}
    out |= {
        "per_class_blocks": args.per_class,
        "orders": args.orders,
        "mixture_prior": args.mixture_prior,
        "module_groups": args.module_groups,
        "settings": tuple(args.settings) if args.settings else None,
        "seeds": parse_seeds(args.seeds) if args.seeds is not None else None,
        "chapters": split_list(args.chapters) if args.chapters is not None else None,
        "rows": split_list(args.rows) if args.rows is not None else None,
        "whole_task": None if args.whole_task is None else args.whole_task == "on",
        "prior_correction": None
        if args.prior_correction is None
        else args.prior_correction == "on",
        "warm_start": None if args.warm_start is None else args.warm_start == "on",
    }
    return {k: v for k, v in out.items() if v is not None}


def split_list(text: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    return () if items == ("none",) else items


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"3"``: seeds 0, 1, 2; ``"4,5"``: those seeds; ``"7,"``: seed 7 alone."""
    try:
        if "," not in text:
            return tuple(range(int(text)))
        return tuple(int(x) for x in split_list(text))
    except ValueError:
        raise ValueError(f"--seeds: expected N or a comma-separated list, got {text!r}") from None


def check_sizes(sizes: Sizes) -> None:
    """Everything that would otherwise fail after the models trained."""
    if not sizes.seeds or min(sizes.seeds) < 0 or len(set(sizes.seeds)) != len(sizes.seeds):
        raise ValueError(f"--seeds: need distinct seeds >= 0, got {list(sizes.seeds)}")
    if sizes.orders not in ("auto", "all", "cyclic") and not (
        sizes.orders.isdigit() and int(sizes.orders) >= 1
    ):
        raise ValueError(f"--orders: auto, all, cyclic or N >= 1, got {sizes.orders!r}")
    unknown = set(sizes.rows) - set(ROW_FAMILIES)
    if unknown:
        raise ValueError(f"--rows: unknown {sorted(unknown)}; choose from {ROW_FAMILIES}")
    if sizes.institutions < 2 or not sizes.alpha > 0:
        raise ValueError("--institutions needs >= 2 and --alpha > 0")
    for name in (
        "steps",
        "budget",
        "ipc",
        "distill_steps",
        "per_class_blocks",
        "max_test",
        "rounds",
    ):
        if getattr(sizes, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if sizes.mixture_prior < 0:
        raise ValueError("--mixture-prior must be >= 0")
    for name in ("lwf_weight", "lwf_replay_weight", "replay_weight"):
        value = getattr(sizes, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0")
    for family in sorted(set(sizes.rows) - set(DEFAULT_ROWS)):
        if not HOOK_READY[family]():
            raise ValueError(f"--rows {family}: this tree lacks its API ({HOOK_API[family]})")
    if "tasks" in sizes.settings:
        check_chapters(sizes.chapters)


def default_tag(quick: bool, sizes: Sizes) -> str:
    """quick / full[-settings], plus what of the split differs from the default one."""
    tag = "quick" if quick else "full"
    if not quick and sizes.settings != Sizes().settings:
        tag += "-" + "-".join(sizes.settings)
    if sizes.chapters != TASK_CHAPTERS and "tasks" in sizes.settings:
        tag += "-ch" + "-".join(sizes.chapters)
    if (sizes.institutions, sizes.alpha) != (3, 0.3) and "skew" in sizes.settings:
        tag += f"-n{sizes.institutions}-a{sizes.alpha:g}"
    if sizes.heart_task != Sizes().heart_task and "heart" in sizes.settings:
        tag += f"-heart{sizes.heart_task}"
    knobs = continual_knobs(sizes)  # an ablation must not overwrite the default run's files
    if "lwf_weight" in knobs:
        tag += f"-lwf{knobs['lwf_weight']:g}"
    if "lwf_replay_weight" in knobs:
        tag += f"-lwfr{knobs['lwf_replay_weight']:g}"
    if "replay_weight" in knobs:
        tag += f"-rw{knobs['replay_weight']:g}"
    if "whole_task" in knobs:
        tag += "-whole" if knobs["whole_task"] else "-apart"
    if "prior_correction" in knobs:
        tag += "-prior" if knobs["prior_correction"] else "-noprior"
    if "warm_start" in knobs:
        tag += "-warm" if knobs["warm_start"] else "-cold"
    if "continual-rounds" in sizes.rows and sizes.rounds != Sizes().rounds:
        tag += f"-rounds{sizes.rounds}"
    return tag


def combine(paths: Sequence[Path], out: Path, tag: str) -> Path:
    """One report from runs made separately: the settings run in parallel, or the seeds of
    one setting (their samples pooled, so the table is over every seed). Runs of one setting
    must share its split and recipe (every size but the seeds) and no seed."""
    samples: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    split: dict[str, dict[str, Any]] = {}
    metas = []
    for p in paths:
        data = json.loads(p.read_text())
        metas.append({k: v for k, v in data.items() if k != "settings"})
        sizes = {k: v for k, v in data["sizes"].items() if k not in ("seeds", "settings")}
        for name, r in data["settings"].items():
            if split.setdefault(name, sizes) != sizes:
                keys = sizes.keys() | split[name].keys()
                differ = sorted(k for k in keys if sizes.get(k) != split[name].get(k))
                raise ValueError(f"{p}: its {name} run differs from an earlier one in {differ}")
            again = {x["seed"] for x in r["samples"]} & {x["seed"] for x in samples.get(name, [])}
            if again:
                raise ValueError(f"{p}: {name} seed(s) {sorted(again)} are in an earlier file")
            samples.setdefault(name, []).extend(r["samples"])
            seconds[name] = seconds.get(name, 0.0) + r["seconds"]
    results = {name: finish(name, samples[name], seconds[name]) for name in samples}
    seeds = sorted({x["seed"] for runs in samples.values() for x in runs})
    settings = list(samples)  # the table's, not the first file's
    meta = {
        "tag": tag,
        "sizes": {**metas[0]["sizes"], "seeds": seeds, "settings": settings},
        "combined_from": metas,
    }
    return write_outputs(out, tag, results, meta)


def main(argv: Sequence[str] | None = None) -> None:
    # Read by huggingface_hub on import: nothing above loads it (the backends import
    # transformers when a model is loaded, PEFT is imported by ``peft_merges``).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, sizes = parse(argv)
    if args.combine:
        try:
            print(combine(args.combine, args.out, args.tag or "combined").read_text())
        except ValueError as e:
            raise SystemExit(f"bench_forge --combine: {e}") from e
        return
    torch.set_num_threads(1)  # measured: MiniLM on this VM is several times faster on one
    t0 = time.perf_counter()
    tag = args.tag or default_tag(args.quick, sizes)
    backend = load_backend("text", None)
    say(t0, f"loaded MiniLM ({backend.fingerprint[:12]}); sizes {asdict(sizes)}")
    meta = {"tag": tag, "sizes": asdict(sizes), "torch_threads": 1, "base": backend.name}
    results: dict[str, Any] = {}
    for name in sizes.settings:
        samples: list[dict[str, Any]] = []
        started = time.perf_counter()
        for seed in sizes.seeds:
            with tempfile.TemporaryDirectory(prefix=f"bench-forge-{name}-") as work:
                samples += run_seed(backend, name, sizes, seed, Path(work), t0)
            results[name] = finish(name, samples, time.perf_counter() - started)
            meta["seconds"] = time.perf_counter() - t0
            meta["train_cpu_per_step"] = train_cost()
            path = write_outputs(args.out, tag, results, meta)  # partial results survive
    say(t0, f"done in {time.perf_counter() - t0:.0f} s; wrote {path} (+ .json, .png)")
    print(path.read_text())


if __name__ == "__main__":
    main()
