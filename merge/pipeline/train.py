"""Train a task's LoRA plugin on the backend's input tower (the institution's private step).

The head is not learned: logits are ``logit_scale * cos(f(x), g(class name))`` with ``g`` the
frozen class-name tower, exactly as the composite will be evaluated after merging. Training is
seeded end to end (LoRA init, dropout and batch order run under a forked, seeded RNG, so the
caller's global RNG is untouched) and writes a standard PEFT adapter directory, plus
``medforge.json`` with the task, classes, base fingerprint, validation metrics and how the
plugin was trained (``"training"``).

Two methods. **Independent** (the paper): the LoRA learns on the frozen base alone.
**Continual** (:class:`Continual`): the LoRA learns on top of the composite it will be committed
onto, the frozen base plus the composite's dense ``ΔW`` (a fixed delta added to a private copy
of the base's weights; the shared base is never modified, and the saved adapter holds the new
LoRA only), on its own data plus a replay of the distilled sets of every task merged so far,
with weight ``replay_weight``. These keep it from forgetting what the composite knew:

- one head per task (``whole_task``): the local data and every replayed set of the member's
  task are scored against that task's whole class list (under label skew a member holds only
  some of the classes; scored apart, it never learns to tell its classes from the others);
  replayed sets of other tasks against their own;
- Learning without Forgetting (Li & Hoiem) on the member's own inputs (``lwf_weight``) when
  the composite already holds its task (label skew): the composite's tempered class
  probabilities, and a ``T² · KL`` term keeping the new model's near them (a composite that
  never learned the task has nothing on it worth keeping: measured, -1.7 points);
- the same term on the replayed examples, for every task (``lwf_replay_weight``, "dark
  experience replay"): the composite's probabilities carry more of an old task than the
  replayed labels alone;
- for a fusion composite that already holds the member's task, a local loss adjusted by the
  member's own class prior (``prior_correction``, logit adjustment): its skewed counts do not
  become the shared task's prior (measured under skew: Fusion +4.9 points; Stack and
  Mixture lost 1-2 points with it, so it is off for them unless asked for).

Both targets are computed once, before the first step, on top of a non-empty ``ΔW`` only.
The LoRA starts on the composite (``warm_start``): onto a stack composite each ``A`` on its
``ΔW``'s top singular directions, ``B`` at zero; onto a fusion composite, whose fold folds
factors rather than ``ΔW``, the LoRA starts *as* the composite's factors on the bare base
(``ΔW`` still gives the targets above), so the fold blends two models from one start.
(A class-balanced loss measured worse under skew and was dropped.) In stack mode a commit
with coefficients ``(1, 1)`` is then exactly sequential fine-tuning with rehearsal, and
`medforge commit` takes them, unsearched, for a plugin trained on the item it goes onto
(``search_coeffs(trained_on_head=True)``).
A mixture's members are evaluated one by one on the base (``P = Σ λ_j P_j``), so a mixture
gives no delta: the member trains on the base, with the same replay.

Devices: training runs where the backend's model is (``backend.device``, chosen by
``load_backend(..., device=...)``; ``merge.pipeline.device``). On CUDA the forward passes run
under autocast (bf16, else fp16 with a gradient scaler); the LoRA weights, the optimizer and
the loss (the cosine head included) stay float32. On the CPU nothing changes: a seeded CPU run
is byte-identical to one from before devices existed. Whatever the device, the saved adapter
is CPU float32 (the model is moved back before saving), as the fold that consumes it is.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from merge.fold import Composite, delta_weights
from merge.lora import LoraModule
from merge.lora_config import CONFIG_NAME, WEIGHTS_NAME
from merge.pipeline.backends.base import DualEncoder, cosine_logits, delta_params
from merge.pipeline.datasets import Examples, require_every_class, stratified_split
from merge.pipeline.device import Precision, device_of
from merge.pipeline.distill import Distilled, widened
from merge.pipeline.errors import DataFormatError, DatasetTooSmallError, LabelError
from merge.pipeline.metrics import Metrics, classification_metrics
from merge.safetensors_io import write_canonical

PLUGIN_META = "medforge.json"
PLUGIN_FORMAT = "medforge-plugin/1"
# the training record's "loss" when the local loss was logit-adjusted (prior_correction)
PRIOR_CORRECTED = "prior-corrected"
# the training record's "init" when each LoRA's A started on its module's ΔW (warm_start,
# onto a stack composite), and when the LoRA started as the fusion composite's own factors
WARM_INIT = "composite-svd"
FACTORS_INIT = "composite-factors"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters. Defaults: the text path (offline-data.md: r=8 on query/value,
    60 steps); :meth:`for_backend` gives the paper's CLIP defaults."""

    steps: int = 60
    batch_size: int = 16
    lr: float = 2e-3
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.1
    targets: tuple[str, ...] | None = None  # None: the backend's lora_targets
    val_fraction: float = 0.2
    max_val: int = 256
    seed: int = 0
    progress: bool = True
    # continual training only: the replay loss's weight, and replayed examples per step
    # (None: half a batch, at least one)
    replay_weight: float = 1.0
    replay_batch: int | None = None
    # continual training only, on top of a non-empty ΔW that already holds this task (a
    # replayed set of the same task: label skew): Learning without Forgetting, a distillation
    # term pulling the plugin's class probabilities on its own inputs towards the parent
    # composite's (computed once, before training; temperature ``lwf_temperature``)
    lwf_weight: float = 1.0
    lwf_temperature: float = 2.0
    # continual training only, on top of a non-empty ΔW: the same term on the replayed
    # examples (the parent's tempered probabilities on each, over its own task's classes;
    # "dark experience replay", Buzzega et al.), which carry more of what the composite knows
    # of an old task than the replayed labels alone
    lwf_replay_weight: float = 1.0
    # continual training only: score the local data and every replayed set of the same task
    # against that task's whole class list (the local classes plus the replayed ones), not
    # each against its own. Under label skew the local classes are a subset; scored apart,
    # the plugin never learns to tell a local class from a replayed one
    whole_task: bool = True
    # continual training only, when the composite already holds this task (a replayed set of
    # the same task: several members share it): the local cross-entropy is logit-adjusted by
    # the local class prior (Menon et al., "Long-tail learning via logit adjustment"; FedLC
    # for label-skewed federated learning). A member's skewed local counts then do not
    # become the shared task's prior, and a class it rarely sees is not pushed down on every
    # step. None: on for a fusion composite only, as measured under label skew (bench_forge,
    # 3 seeds x 3 orders: continual Fusion +4.9 points, Stack -1.7, Mixture -1.0)
    prior_correction: bool | None = None
    # continual training only, on top of a non-empty ΔW: the LoRA starts on the composite
    # instead of PEFT's random init. Every commit's plugin otherwise restarts from random
    # input directions and spends its few steps finding them again. Stack: each new LoRA's
    # A on the top-r right singular vectors of its module's ΔW (at the default init's row
    # norm), B at zero as always, so the start is exactly the composite (bench_forge, skew
    # 5 seeds x 3 orders: continual Stack 0.680 -> 0.698). Fusion folds factors, not ΔW: the
    # LoRA starts *as* the composite's factors on the bare base (``_start_on_factors``;
    # continual Fusion, seed 0: tasks 0.708 -> 0.752, untuned tasks 0.791 -> 0.842, heart
    # 0.570 -> 0.722; skew 2 seeds 0.662 -> 0.605). None: on for both.
    warm_start: bool | None = None

    @classmethod
    def for_backend(cls, kind: str, **overrides: Any) -> TrainConfig:
        base = {"rank": 16, "alpha": 16, "dropout": 0.1} if kind == "clip" else {}
        return cls(**{**base, **overrides})

    @classmethod
    def quick(cls, **overrides: Any) -> TrainConfig:
        """A CI-sized run: few steps, small validation."""
        return cls(**{"steps": 8, "max_val": 64, "progress": False, **overrides})


@dataclass(frozen=True, eq=False)
class Continual:
    """What a continual plugin trains on: the composite at forge item ``parent`` (hex).

    ``delta``: the composite's dense ``{module path: ΔW}``, held fixed under the new LoRA
    (empty for an empty composite or a mixture); ``replay``: the distilled sets of the tasks
    merged into it, each replayed against its own classes; ``factors``: a fusion composite's
    own ``{module path: LoraModule}``, which a warm-started plugin starts as. Build one with
    :meth:`of`."""

    parent: str
    delta: Mapping[str, torch.Tensor] = field(default_factory=dict)
    replay: tuple[Distilled, ...] = ()
    mode: str = "stack"  # the composite's merge mode (what the recipe's defaults follow)
    factors: Mapping[str, LoraModule] = field(default_factory=dict)

    @classmethod
    def of(cls, composite: Composite, replay: Sequence[Distilled], *, parent: str) -> Continual:
        """Fusion/stack: ``ΔW = delta_weights(composite.modules)``. Mixture: no delta, since
        each member is applied alone to the base; the replay is what ties it to the others."""
        delta = {} if composite.mode == "mixture" else delta_weights(composite.modules)
        factors = (
            {k: m for k, m in composite.modules.items() if isinstance(m, LoraModule)}
            if composite.mode == "fusion"
            else {}
        )
        return cls(parent, delta, tuple(replay), composite.mode, factors)

    @property
    def n_replay(self) -> int:
        return sum(len(d.labels) for d in self.replay)


def namesakes(continual: Continual, task: str, classes: Sequence[str]) -> tuple[str, ...]:
    """The composite's other tasks over exactly ``classes`` (in any order): most likely the
    same task under another name. The recipe's per-task parts (distillation on the member's
    own inputs, one head over the task's replayed sets, the prior correction) apply only
    within one task name, so a member that names a shared task its own way trains as if it
    were alone on it (heart hospitals, README, 3 seeds x 4 orders: continual Stack 0.717 a
    task per site, 0.79 one shared task)."""
    want = frozenset(classes)
    return tuple(
        dict.fromkeys(
            d.task for d in continual.replay if d.task != task and frozenset(d.classes) == want
        )
    )


@dataclass(frozen=True)
class TrainResult:
    out: Path
    base: Metrics  # zero-shot base on the validation split
    plugin: Metrics  # trained plugin on the same split (continual: on top of the composite)
    seconds: float
    seconds_per_step: float
    losses: tuple[float, ...] = field(repr=False)
    # how it was trained: {"method": "independent" | "continual", "replay": n, "parent": hex}
    training: Mapping[str, Any] = field(
        default_factory=lambda: {"method": "independent", "replay": 0, "parent": None}
    )
    composite: Metrics | None = None  # continual: the composite alone on the validation split
    # continual with replay: accuracy on the replayed sets, of the composite alone and after
    replay_accuracy: tuple[float, float] | None = None
    device: str = "cpu"  # where it trained (the adapter is CPU float32 whatever this says)
    precision: str = "float32"  # float32, bf16-autocast or fp16-autocast (Precision.name)
    step_seconds: tuple[float, ...] = field(default=(), repr=False)  # each step's wall time


def check_trainable(records: Examples, batch_size: int) -> None:
    """Everything that must hold before a step is spent (typed errors, see pipeline_errors).
    Labels inside the class list are guaranteed by ``Examples`` itself."""
    if len(records.classes) < 2:
        raise LabelError(f"a classifier needs >= 2 classes, got {list(records.classes)}")
    require_every_class(records, "training data")
    if len(records) < batch_size:
        raise DatasetTooSmallError(f"{len(records)} training examples < batch size {batch_size}")


def train_plugin(
    backend: DualEncoder,
    records: Examples,
    *,
    task: str,
    out: Path,
    config: TrainConfig,
    continual: Continual | None = None,
) -> TrainResult:
    """Train, validate and save a plugin for ``task`` on ``records`` (see module docstring);
    on top of ``continual``'s composite with its replay when given, else independently. Runs
    on ``backend.device``; the adapter written to ``out`` is CPU float32 on every device."""
    train_set, val_set = _split(records, config)
    check_trainable(train_set, config.batch_size)
    if continual is not None and config.whole_task:
        train_set, continual = _over_whole_task(train_set, task, continual)
    replay = _replay_pools(backend, continual.replay) if continual is not None else []
    log_prior = _log_prior(train_set, task, continual, config)
    t0 = time.perf_counter()
    eval_batch = config.batch_size * 4
    device = device_of(backend)
    precision = Precision.for_device(device)
    # the caller's RNGs stay untouched: the CPU one always, the CUDA one when training there
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(config.seed)
        start = _start_model(backend, continual.delta) if continual is not None else None
        start_m = evaluate_model(backend, start, val_set, eval_batch) if start is not None else None
        anchor = (
            _anchor(backend, start, train_set, task, continual, config, eval_batch)
            if start is not None and continual is not None
            else None
        )
        replay_before = (
            _replay_accuracy(backend, start, replay) if start is not None and replay else None
        )
        if start is not None and continual is not None and continual.delta:
            if config.lwf_replay_weight > 0:  # an empty ΔW: the "parent" is the bare base
                replay = [_with_parent(backend, start, p, config, eval_batch) for p in replay]
        warm = _warm(continual, config)
        factors = continual.factors if warm and continual is not None else {}
        if factors:  # fusion: the LoRA *is* the composite at the start, on the bare base
            peft_model = _wrap(backend, _ranked(config, factors))
            _start_on_factors(peft_model, factors)
        else:
            peft_model = _wrap(backend, config, start)
            if warm and continual is not None:  # (``warm`` implies it; mypy does not know)
                _warm_start(peft_model, continual.delta)
        losses, step_times = _fit(
            backend, peft_model, train_set, config, replay, precision, anchor, log_prior
        )
    base_m = evaluate_model(backend, backend.model, val_set, eval_batch)
    plugin_m = evaluate_model(backend, _inner(peft_model), val_set, eval_batch)
    replay_after = _replay_accuracy(backend, _inner(peft_model), replay) if replay else None
    training = _training(continual, log_prior is not None, warm, bool(factors))
    if device.type != "cpu":
        peft_model.to("cpu")  # the adapter file is CPU float32, whatever trained it
    save_adapter(peft_model, out, backend.fingerprint)
    _write_meta(out, backend, task, records.classes, config, base_m, plugin_m, training, start_m)
    return TrainResult(
        out,
        base_m,
        plugin_m,
        time.perf_counter() - t0,
        sum(step_times) / max(config.steps, 1),
        tuple(losses),
        training,
        start_m,
        (replay_before, replay_after)
        if replay_before is not None and replay_after is not None
        else None,
        str(device),
        precision.name,
        tuple(step_times),
    )


def _training(
    continual: Continual | None, prior_corrected: bool, warm: bool = False, factors: bool = False
) -> dict[str, Any]:
    """How the plugin was trained, as ``medforge.json`` and then the commit record it.
    ``"loss": "prior-corrected"`` is there only when the correction was applied (not merely
    configured: it needs a composite that already holds the task), so a reader of
    ``medforge log`` knows which loss the plugin was trained with; absent, plain
    cross-entropy (every plugin trained before the correction existed). Likewise
    ``"init"`` only when the LoRA was warm-started (it needs a ΔW): ``"composite-svd"``
    onto a stack composite, ``"composite-factors"`` from a fusion composite's factors;
    absent, PEFT's random init."""
    if continual is None:
        return {"method": "independent", "replay": 0, "parent": None}
    record = {"method": "continual", "replay": continual.n_replay, "parent": continual.parent}
    if prior_corrected:
        record["loss"] = PRIOR_CORRECTED
    if warm:
        record["init"] = FACTORS_INIT if factors else WARM_INIT
    return record


def _split(records: Examples, config: TrainConfig) -> tuple[Examples, Examples]:
    train_set, val_set = stratified_split(records, config.val_fraction, config.seed)
    return train_set, val_set.subset(range(min(len(val_set), config.max_val)))


def _over_whole_task(data: Examples, task: str, continual: Continual) -> tuple[Examples, Continual]:
    """``data`` and the replayed sets of ``task`` over one class list: ``data``'s classes, in
    their order (its labels keep their indices), then the replayed sets' others in order of
    first appearance. Sets of other tasks keep their own classes."""
    whole = dict.fromkeys(data.classes)
    for d in continual.replay:
        if d.task == task:
            whole.update(dict.fromkeys(d.classes))
    classes = tuple(whole)
    if classes == data.classes:
        return data, continual
    replay = tuple(widened(d, classes) if d.task == task else d for d in continual.replay)
    return Examples(data.items, data.labels, classes), replace(continual, replay=replay)


def _warm(continual: Continual | None, config: TrainConfig) -> bool:
    """Whether the LoRA starts on the composite (``config.warm_start``; None: on). Only a
    non-empty ΔW (stack, fusion) has anything to start on."""
    if continual is None or not continual.delta:
        return False
    return True if config.warm_start is None else config.warm_start


def _log_prior(
    data: Examples, task: str, continual: Continual | None, config: TrainConfig
) -> torch.Tensor | None:
    """``log π_y`` of the local labels over ``data``'s classes (one pseudo-count per class,
    so a class the member lacks stays finite), added to the local logits in training; None
    (no adjustment) unless the correction is on (``config.prior_correction``; None: for a
    fusion composite) and the composite already holds this task. A member alone on its task
    keeps its own prior: it is the one its data will see."""
    if continual is None:
        return None
    on = config.prior_correction
    if not (continual.mode == "fusion" if on is None else on):
        return None
    if not any(d.task == task for d in continual.replay):
        return None
    counts = torch.bincount(data.label_tensor(), minlength=len(data.classes)).double() + 1.0
    return (counts / counts.sum()).log().float()


@dataclass(frozen=True, eq=False)
class _Pool:
    """Replayed examples of one input shape (they share a forward pass): ``inputs``, and per
    example its set's index into ``classes`` (that set's class features) and its label."""

    inputs: torch.Tensor
    labels: torch.Tensor
    task: torch.Tensor
    classes: tuple[torch.Tensor, ...]
    # the parent's tempered probabilities per example over its set's classes, zero-padded to
    # the widest set (``TrainConfig.lwf_replay_weight``), else None
    soft: torch.Tensor | None = None
    soft_weight: float = 0.0
    temperature: float = 1.0


def _replay_pools(
    backend: DualEncoder,
    sets: Sequence[Distilled],
) -> list[_Pool]:
    """The replay sets checked against the backend, grouped by example shape (usually one),
    on the backend's device."""
    device = device_of(backend)
    by_shape: dict[tuple[int, ...], list[Distilled]] = {}
    for d in sets:
        if d.kind != backend.input_kind or (d.base and d.base != backend.fingerprint):
            raise DataFormatError(
                f"replay set of task {d.task!r} is {d.kind} on base {d.base[:16]}…, "
                f"this base takes {backend.input_kind} and is {backend.fingerprint[:16]}…"
            )
        if len(d.labels):
            by_shape.setdefault(tuple(d.inputs.shape[1:]), []).append(d)
    pools = []
    for group in by_shape.values():
        pools.append(
            _Pool(
                torch.cat([d.inputs for d in group]).to(device),
                torch.cat([d.labels for d in group]).to(device),
                torch.cat([torch.full((len(d.labels),), i) for i, d in enumerate(group)]).to(
                    device
                ),
                tuple(backend.encode_classes(d.classes).to(device) for d in group),
            )
        )
    return pools


def _replay_loss(
    backend: DualEncoder, pool: _Pool, feats: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of replayed examples ``idx``, each against its own task's classes."""
    idx = idx.to(pool.task.device)
    total = feats.new_zeros(())
    task, labels = pool.task[idx], pool.labels[idx]
    for t in torch.unique(task).tolist():
        mask = task == t
        logits = cosine_logits(feats[mask], pool.classes[t], backend.logit_scale)
        total = total + F.cross_entropy(logits, labels[mask], reduction="sum")
        if pool.soft is not None:
            target = pool.soft[idx[mask]][:, : logits.shape[1]]
            log_q = (logits / pool.temperature).log_softmax(dim=1)
            kl = F.kl_div(log_q, target, reduction="sum")
            total = total + pool.soft_weight * pool.temperature**2 * kl
    return total / len(idx)


@torch.no_grad()
def _with_parent(
    backend: DualEncoder, parent: nn.Module, pool: _Pool, config: TrainConfig, batch_size: int
) -> _Pool:
    """``pool`` with the parent's tempered probabilities on each of its examples (computed
    once, before the first step)."""
    t = config.lwf_temperature
    feats = _features(backend, parent, pool.inputs, batch_size)
    soft = feats.new_zeros((len(pool.labels), max(c.shape[0] for c in pool.classes)))
    for k, classes in enumerate(pool.classes):
        mask = pool.task == k
        probs = (cosine_logits(feats[mask], classes, backend.logit_scale) / t).softmax(dim=1)
        soft[mask, : classes.shape[0]] = probs
    return replace(pool, soft=soft, soft_weight=config.lwf_replay_weight, temperature=t)


@dataclass(frozen=True, eq=False)
class _Anchor:
    """Learning without Forgetting's targets: the parent's tempered class probabilities on
    every training input, per head (``classes[h]``: that head's class features; ``probs[h]``:
    ``[n_train, c_h]``), fixed before the first step, so the term costs no extra forward."""

    classes: tuple[torch.Tensor, ...]
    probs: tuple[torch.Tensor, ...]
    weight: float
    temperature: float

    def loss(self, backend: DualEncoder, feats: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Mean over heads of ``T² · KL(parent ‖ plugin)`` on the batch ``idx`` (T² keeps the
        gradient's scale independent of the temperature, as in Hinton et al.)."""
        t = self.temperature
        total = feats.new_zeros(())
        for classes, probs in zip(self.classes, self.probs, strict=True):
            logits = cosine_logits(feats, classes, backend.logit_scale) / t
            target = probs[idx.to(probs.device)]
            total = total + F.kl_div(logits.log_softmax(dim=1), target, reduction="batchmean")
        return self.weight * t * t * total / len(self.classes)


@torch.no_grad()
def _anchor(
    backend: DualEncoder,
    parent: nn.Module,
    data: Examples,
    task: str,
    continual: Continual,
    config: TrainConfig,
    batch_size: int,
) -> _Anchor | None:
    """The parent composite's predictions on the training inputs, over the local classes and
    over the whole class list of every replayed set of the same task (under label skew the
    local classes are a subset, and the parent's knowledge of the absent ones is what the
    local cross-entropy erodes). None without a parent (an empty ΔW: the "parent" would be
    the zero-shot base), with a zero weight, or when no replayed set is of this task: a
    parent that never learned the task has nothing on it worth keeping, and anchoring to
    its guesses only holds the new task back (measured: -1.7 points on the bench's
    task-incremental setting)."""
    same_task = [d.classes for d in continual.replay if d.task == task]
    if config.lwf_weight <= 0 or not continual.delta or not same_task:
        return None
    device = device_of(backend)
    heads = dict.fromkeys([data.classes, *same_task])
    # prepared a batch at a time: a whole image folder prepared at once would be held whole
    feats = torch.cat(
        [
            _features(
                backend,
                parent,
                backend.prepare(data.items[i : i + batch_size]).to(device),
                batch_size,
            )
            for i in range(0, len(data), batch_size)
        ]
    )
    classes = tuple(backend.encode_classes(h).to(device) for h in heads)
    probs = tuple(
        (cosine_logits(feats, c, backend.logit_scale) / config.lwf_temperature).softmax(dim=1)
        for c in classes
    )
    return _Anchor(classes, probs, config.lwf_weight, config.lwf_temperature)


@torch.no_grad()
def _replay_accuracy(backend: DualEncoder, model: nn.Module, pools: Sequence[_Pool]) -> float:
    """Accuracy of ``model`` over every replayed example, each against its own classes."""
    right = total = 0
    for pool in pools:
        feats = _features(backend, model, pool.inputs, 64)
        for t, classes in enumerate(pool.classes):
            mask = pool.task == t
            guess = cosine_logits(feats[mask], classes, backend.logit_scale).argmax(dim=1)
            right += int((guess == pool.labels[mask]).sum())
        total += len(pool.task)
    return right / max(total, 1)


@torch.no_grad()
def _features(
    backend: DualEncoder, model: nn.Module, inputs: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``model``'s float32 features of prepared ``inputs``, ``batch_size`` rows a pass."""
    return torch.cat(
        [
            backend.features(model, inputs[i : i + batch_size])
            for i in range(0, len(inputs), batch_size)
        ]
    ).float()


def _start_model(backend: DualEncoder, delta: Mapping[str, torch.Tensor]) -> nn.Module:
    """A private copy of the base with the composite's ``ΔW`` added to its weights (frozen).
    The shared base is never touched; an empty delta gives a plain copy."""
    model = copy.deepcopy(backend.model)
    if delta:
        summed = delta_params(model, delta)  # checks every module and shape against the base
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in summed:
                    param.copy_(summed[name])
    return model


def _wrap(backend: DualEncoder, config: TrainConfig, start: nn.Module | None = None) -> Any:
    """A PEFT model around ``start`` (owned by the caller) or a *copy* of the base, so the
    shared frozen base stays untouched."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.targets or backend.lora_targets),
        bias="none",
    )
    model = start if start is not None else copy.deepcopy(backend.model)
    with warnings.catch_warnings():
        # peft 0.21.2 reads transformers' deprecated `is_gradient_checkpointing`: their
        # FutureWarning, not ours (the suite turns warnings into errors).
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return get_peft_model(model, lora)


@torch.no_grad()
def _warm_start(peft_model: Any, delta: Mapping[str, torch.Tensor]) -> None:
    """Each LoRA's ``A`` on the top right singular vectors of its module's ``ΔW`` (float64
    SVD), scaled to the row norm PEFT's init gave it; ``B`` stays zero, so the model is still
    the composite. Modules without a ΔW (or a zero one) keep PEFT's init."""
    for name, module in _inner(peft_model).named_modules():
        lora_a = getattr(module, "lora_A", None)
        if name not in delta or lora_a is None or "default" not in lora_a:
            continue
        d = delta[name].double()
        if not bool(d.any()):
            continue
        a = lora_a["default"].weight
        _, _, vh = torch.linalg.svd(d, full_matrices=False)
        rows = vh[: a.shape[0]] * a.norm(dim=1).mean().double()
        a[: rows.shape[0]].copy_(rows.to(a.dtype, copy=False).to(a.device))


def _ranked(config: TrainConfig, factors: Mapping[str, LoraModule]) -> TrainConfig:
    """``config`` with a rank that holds every factor (a fusion composite's rank is its
    widest member's, zero-padded)."""
    rank = max([config.rank, *(m.rank for m in factors.values())])
    return config if rank == config.rank else replace(config, rank=rank)


@torch.no_grad()
def _start_on_factors(peft_model: Any, factors: Mapping[str, LoraModule]) -> None:
    """Each LoRA's ``A`` and ``B`` set to its module's composite factors (``B`` divided by
    PEFT's ``scaling``, which the stored factors have folded in), so the model on the bare
    base is the fusion composite; rows past a factor's rank keep PEFT's init, with ``B``'s
    columns there zero. Fusion folds factors, not ``ΔW``: a LoRA trained on top of the
    composite's ``ΔW`` is not what the fold makes of it (measured on the heart hospitals:
    continual Fusion 0.57, independent 0.75); one trained *from* its factors is, and the
    search's ``w1·A + w2·A'`` then interpolates two models from one start."""
    for name, module in _inner(peft_model).named_modules():
        lora_a = getattr(module, "lora_A", None)
        if name not in factors or lora_a is None or "default" not in lora_a:
            continue
        f = factors[name]
        a, b = lora_a["default"].weight, module.lora_B["default"].weight
        a[: f.rank].copy_(f.A.to(a.device))
        b[:, : f.rank].copy_((f.B / module.scaling["default"]).to(b.device))


def _inner(peft_model: Any) -> nn.Module:
    """The HF model with LoRA layers injected: what ``backend.features`` expects."""
    inner: nn.Module = peft_model.get_base_model()
    return inner


def _batches(n: int, size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless seeded epochs of shuffled indices, dropping each epoch's ragged tail."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - size + 1, size):
            yield perm[i : i + size]


def _fit(
    backend: DualEncoder,
    peft_model: Any,
    data: Examples,
    config: TrainConfig,
    replay: Sequence[_Pool] = (),
    precision: Precision | None = None,
    anchor: _Anchor | None = None,
    log_prior: torch.Tensor | None = None,
) -> tuple[list[float], list[float]]:
    """The optimizer steps: each step's loss and wall time (the loss read back is the step's
    end, so on a GPU the time covers the step's kernels)."""
    amp = precision or Precision(device_of(backend))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = _Optimizer(torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0), amp)
    classes = backend.encode_classes(data.classes).to(amp.device)
    labels = data.label_tensor().to(amp.device)
    bias = log_prior.to(amp.device) if log_prior is not None else None
    batches = _batches(len(data), config.batch_size, config.seed)
    size = config.replay_batch or max(1, config.batch_size // 2)
    # one endless seeded stream per pool; the steps take the pools in turn
    streams = [
        _batches(len(p.labels), min(size, len(p.labels)), config.seed + 1 + k)
        for k, p in enumerate(replay)
    ]
    peft_model.train()
    losses: list[float] = []
    times: list[float] = []
    # disable=None: a bar on a terminal, none in a log file (its \r updates are noise there)
    bar = tqdm(
        range(config.steps), desc="train", disable=None if config.progress else True, leave=False
    )
    for step in bar:
        t0 = time.perf_counter()
        idx = next(batches)
        rehearse = None
        if replay:
            k = step % len(replay)
            rehearse = (replay[k], next(streams[k]), config.replay_weight)
        y = labels[idx.to(amp.device)]
        loss = _step(backend, peft_model, opt, data, idx, y, classes, rehearse, anchor, bias)
        losses.append(loss)
        times.append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss:.3f}")
    peft_model.eval()
    return losses, times


def _joint_features(
    backend: DualEncoder, model: nn.Module, x: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the own batch ``x`` and the replayed ``r``, in one forward pass where the
    inputs allow it (a small model's step is mostly per-pass overhead): pixels concatenate;
    token ids and synthetic embeddings go through the text backend's ``joint_features``,
    which pads them to one pass when that wastes little."""
    if x.is_floating_point() and x.shape[1:] == r.shape[1:]:
        both = backend.features(model, torch.cat([x, r.to(x.dtype)]))
        return both[: len(x)], both[len(x) :]
    joint = getattr(backend, "joint_features", None)
    if joint is not None and not x.is_floating_point() and r.dim() == 3:
        feats, rfeats = joint(model, x, r)
        return feats, rfeats
    return backend.features(model, x), backend.features(model, r)


class _Optimizer:
    """AdamW under a :class:`Precision`: the forward passes under its autocast, the step
    through a gradient scaler for fp16 (plain backward + step otherwise, as on the CPU)."""

    def __init__(self, opt: torch.optim.Optimizer, precision: Precision) -> None:
        self.opt = opt
        self.precision = precision
        self._scaler = precision.scaler()

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        if self._scaler is None:
            torch.autograd.backward(loss)
            self.opt.step()
            return
        self._scaler.scale(loss).backward()
        self._scaler.step(self.opt)
        self._scaler.update()


def _step(
    backend: DualEncoder,
    peft_model: Any,
    opt: _Optimizer,
    data: Examples,
    idx: torch.Tensor,
    y: torch.Tensor,
    classes: torch.Tensor,
    rehearse: tuple[_Pool, torch.Tensor, float] | None = None,
    anchor: _Anchor | None = None,
    bias: torch.Tensor | None = None,
) -> float:
    """One optimizer step. Only the encoder runs under autocast: the features come back to
    float32 (a no-op on the CPU) before the cosine head and the loss."""
    model = _inner(peft_model)
    x = backend.prepare([data.items[int(i)] for i in idx]).to(opt.precision.device)
    if rehearse is None:
        with opt.precision.autocast():
            feats = backend.features(model, x)
        loss = _local_loss(backend, feats.float(), classes, y, bias)
    else:
        pool, ridx, weight = rehearse
        r = pool.inputs[ridx.to(pool.inputs.device)]
        with opt.precision.autocast():
            feats, rfeats = _joint_features(backend, model, x, r)
        loss = _local_loss(backend, feats.float(), classes, y, bias)
        loss = loss + weight * _replay_loss(backend, pool, rfeats.float(), ridx)
    if anchor is not None:
        loss = loss + anchor.loss(backend, feats.float(), idx)
    opt.step(loss)
    return float(loss.detach())


def _local_loss(
    backend: DualEncoder,
    feats: torch.Tensor,
    classes: torch.Tensor,
    y: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Cross-entropy on the member's own batch; ``bias`` (a log prior) is added to the logits
    in training only, so the model itself is left without it."""
    logits = cosine_logits(feats, classes, backend.logit_scale)
    return F.cross_entropy(logits if bias is None else logits + bias, y)


@torch.no_grad()
def evaluate_model(
    backend: DualEncoder, model: nn.Module, data: Examples, batch_size: int = 64
) -> Metrics:
    """Metrics of ``model`` (the base or a PEFT-injected copy) on ``data``, in batches."""
    classes = backend.encode_classes(data.classes)
    chunks = [
        backend.features(model, backend.prepare(data.items[i : i + batch_size]))
        for i in range(0, len(data), batch_size)
    ]
    feats = torch.cat(chunks) if chunks else torch.empty(0, classes.shape[1])
    probs = cosine_logits(feats, classes, backend.logit_scale).softmax(dim=1)
    return classification_metrics(probs, data.label_tensor())


def save_adapter(peft_model: Any, out: Path, fingerprint: str) -> None:
    """PEFT's ``save_pretrained``, then made canonical for content addressing.

    The base fingerprint goes into the safetensors metadata (``"base"``: what
    ``merge.lora.load_adapter`` checks against the network's base), and the config is
    rewritten with sorted keys and sorted ``target_modules`` (PEFT keeps them in a ``set``,
    whose order changes with the hash seed), so one seed gives byte-identical files. The
    model must be on the CPU (``train_plugin`` moves it back): the file is CPU float32.
    """
    from safetensors.torch import load_file

    peft_model.save_pretrained(str(out))
    weights = out / WEIGHTS_NAME
    write_canonical(weights, load_file(str(weights)), {"format": "pt", "base": fingerprint})
    config_path = out / CONFIG_NAME
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_meta(
    out: Path,
    backend: DualEncoder,
    task: str,
    classes: tuple[str, ...],
    config: TrainConfig,
    base_m: Metrics,
    plugin_m: Metrics,
    training: Mapping[str, Any],
    start_m: Metrics | None,
) -> None:
    validation = {"base": base_m.as_dict(), "plugin": plugin_m.as_dict()}
    if start_m is not None:
        validation["composite"] = start_m.as_dict()
    meta = {
        "format": PLUGIN_FORMAT,
        "task": task,
        "classes": list(classes),
        "backend": backend.kind,
        "base": backend.fingerprint,
        "base_name": backend.name,
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "validation": validation,
        "training": dict(training),
    }
    (out / PLUGIN_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_plugin_meta(path: Path) -> dict[str, Any]:
    """The ``medforge.json`` written next to a trained adapter."""
    meta: dict[str, Any] = json.loads((path / PLUGIN_META).read_text())
    return meta
