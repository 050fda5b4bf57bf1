"""The author's coefficient search (LoraHub-style, as in the MedForge paper).

"Search once, apply everywhere": forward passes differ in the last bits between machines, so
only the commit's *author* runs this, against the head it merges onto; the coefficients it
returns travel inside the signed commit and every node applies them with ``merge.fold``.

Objective, over the pooled distilled data of every task merged so far (each sample scored
against its own task's class names)::

    loss(w) = mean_i ℓ(P(x_i), y_i) + l1 · mean(|w1|, |w2|)
    logits_t(x) = logit_scale · f(x) @ g(classes_t).T          (both unit norm: CLIP-style)
    fusion/stack: P = softmax(logits with ΔW of apply(head, new, w))
    mixture:      P = Σ_j λ'_j softmax(logits_j),  λ' = [w1·λ, w2]

``ℓ`` is chosen by ``SearchSettings.objective``:

- ``"paper"``: the paper's code, ``cross_entropy(P, y)``, i.e. cross-entropy applied to
  *probabilities* as if they were logits (``-log softmax(P)[y]``);
- ``"logprob"`` (default): the negative log-likelihood ``-log P[y]``.

The default is ``"logprob"`` because it is the quantity the paper means: softmaxing
probabilities squashes every loss into about ``[log C - 1, log C]``, so the landscape the
optimizer sees is nearly flat and the L1 term dominates it, and for a mixture (whose ``P`` is
already a distribution) a second softmax has no meaning. ``"paper"`` stays for faithful
reproduction. ``logprob`` renormalises ``P`` per sample before the log (a mixture's
``Σ λ_j softmax_j`` is a distribution only when the weights sum to 1; unnormalised, the search
just inflated the weights to the bound), and clamps it at 1e-12 so candidates with negative
mixture weights score badly instead of producing NaN.

Per-module groups (``SearchSettings.groups`` != "none", fusion/stack only): after the scalar
search, one pair per module group (``merge.groups``) touched by the head or the plugin is
refined, ``2·G`` parameters, starting from the scalar optimum in every group; modules of no
group keep the scalar pair. The objective is the same with the L1 term over every group
coefficient (``l1 · mean |w|``, equal to the scalar term at the start), budget
``group_budget`` or ``budget · G``, seeded by ``seed``. The start is scored first and the
best point scored is kept, so the refined objective is never above the scalar optimum's. The
result carries ``coeffs`` (the scalar optimum) and ``module_coeffs`` (the refined pairs).

Devices: the forward passes run where the encoder's model is (``encoder.device``;
``merge.pipeline.device``): the pooled distilled inputs, labels and class features are moved
there once, and each candidate's dense ``ΔW`` is folded on the CPU in float32
(``merge.fold``, as every node folds) and moved there per evaluation. What the search returns
is plain floats.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nevergrad as ng
import numpy as np
import torch
import torch.nn.functional as F

from merge.fold import Composite, apply, delta_weights
from merge.groups import ModuleCoeffs, group_names
from merge.lora import LoraAdapter
from merge.pipeline.backends.base import DualEncoder, cosine_logits
from merge.pipeline.device import device_of
from merge.spec import SearchSettings

_EPS = 1e-12


class TaskData(Protocol):
    """What the search reads from a task's distilled set (``Distilled`` fits)."""

    @property
    def inputs(self) -> torch.Tensor: ...
    @property
    def labels(self) -> torch.Tensor: ...
    @property
    def classes(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, eq=False)
class DistilledSet:
    """One task's distilled summary: model inputs, int64 labels, the class names they index."""

    inputs: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]


@dataclass(frozen=True)
class SearchResult:
    """What the commit records: the coefficients and the claim others can re-check."""

    coeffs: tuple[float, float]
    objective: Mapping[str, float]  # loss_before, loss_after, evaluations (as a float)
    # Per-group pairs (searched when the spec groups modules); ``coeffs`` then applies to
    # modules of no group, and ``objective`` also holds ``loss_scalar`` (at ``coeffs`` alone).
    module_coeffs: Mapping[str, tuple[float, float]] | None = None


def search_coeffs(
    encoder: DualEncoder,
    head: Composite,
    adapter: LoraAdapter,
    data: Sequence[TaskData],
    settings: SearchSettings | None = None,
    *,
    trained_on_head: bool = False,
) -> SearchResult:
    """Coefficients ``(w1, w2)`` for ``apply(head, adapter, ·)``; seeded, budgeted.

    ``loss_before`` is the head's pooled loss, ``loss_after`` the merged candidate's at the
    chosen coefficients (both without the L1 term). An empty head takes ``(1.0, 1.0)``
    without searching (``evaluations`` = 0), and so does a stack head that the plugin was
    trained on (``trained_on_head``: a continual plugin): ``(1, 1)`` is then exactly the
    model that was trained, sequential fine-tuning with rehearsal, and a search on the small
    distilled sets only moves away from it (measured in ``scripts/bench_forge.py``: lower
    test accuracy in every arrival order of the task-incremental and label-skew settings).
    With module groups, ``module_coeffs`` are refined from the scalar optimum (see the
    module's docstring).
    """
    cfg = settings or SearchSettings()
    with torch.no_grad():
        pooled = _Pooled(encoder, data, cfg.objective, mixture=head.mode == "mixture")
        before = pooled.loss(predict_proba_all(encoder, head, pooled.tasks))
        score = _scorer(encoder, head, adapter, pooled)
        if head.is_empty or (trained_on_head and head.mode == "stack"):
            return SearchResult((1.0, 1.0), _claim(before, score((1.0, 1.0)), 0))
        calls = [0]

        def objective(x: np.ndarray) -> float:
            calls[0] += 1
            w = (float(x[0]), float(x[1]))
            return score(w) + cfg.l1 * (abs(w[0]) + abs(w[1])) / 2

        w1, w2 = _minimize(objective, cfg)
        scalar_loss = score((w1, w2))
        names = group_names(cfg.groups, set(head.modules) | set(adapter.modules))
        if head.mode == "mixture" or not names:
            return SearchResult((w1, w2), _claim(before, scalar_loss, calls[0]))
        pairs, loss = _refine(encoder, head, adapter, pooled, cfg, (w1, w2), names, calls)
        claim = _claim(before, loss, calls[0]) | {"loss_scalar": scalar_loss}
        return SearchResult((w1, w2), claim, pairs)


def predict_proba(
    encoder: DualEncoder, c: Composite, inputs: torch.Tensor, class_features: torch.Tensor
) -> torch.Tensor:
    """``P(y | x)`` of a composite on one task (mixture: one forward pass per member)."""
    return predict_proba_all(encoder, c, [(inputs, class_features)])[0]


def predict_proba_all(
    encoder: DualEncoder, c: Composite, tasks: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """``P(y | x)`` per task for ``[(inputs, class features), ...]``; no autograd graph. Each
    result is on the device of its task's inputs (CPU inputs: CPU probabilities)."""
    with torch.no_grad():
        return _predict(encoder, c, tasks)


def _predict(
    encoder: DualEncoder, c: Composite, tasks: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    if c.mode != "mixture" or c.is_empty:
        return _softmax_all(encoder, dict(delta_weights(c.modules)) or None, tasks)
    total: list[torch.Tensor] | None = None
    for member, lam in zip(c.members, c.weights, strict=True):
        probs = _softmax_all(encoder, delta_weights(member.modules), tasks)
        scaled = [p * lam for p in probs]
        total = scaled if total is None else [t + s for t, s in zip(total, scaled, strict=True)]
    assert total is not None
    return total


def _softmax_all(
    encoder: DualEncoder,
    delta: Mapping[str, torch.Tensor] | None,
    tasks: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> list[torch.Tensor]:
    return [
        torch.softmax(cosine_logits(encoder.encode_inputs(x, delta), g, encoder.logit_scale), -1)
        for x, g in tasks
    ]


class _Pooled:
    """The pooled distilled data with each task's frozen class features computed once, all on
    the encoder's device (the inputs cross to it once, not once per candidate)."""

    def __init__(
        self, encoder: DualEncoder, data: Sequence[TaskData], objective: str, mixture: bool
    ) -> None:
        if not data:
            raise ValueError("the search needs distilled data of at least one task")
        device = device_of(encoder)
        self.tasks = [
            (d.inputs.to(device), encoder.encode_classes(d.classes).to(device)) for d in data
        ]
        self.labels = [d.labels.to(device, torch.int64) for d in data]
        self.objective = objective
        self.renormalise = mixture and objective == "logprob"

    def loss(self, probs: Sequence[torch.Tensor]) -> float:
        if self.renormalise:
            probs = _renormalised(probs)
        per_sample = [
            _sample_loss(p, y, self.objective) for p, y in zip(probs, self.labels, strict=True)
        ]
        return float(torch.cat(per_sample).mean())


def _sample_loss(probs: torch.Tensor, labels: torch.Tensor, objective: str) -> torch.Tensor:
    if objective == "paper":  # the paper's code: cross-entropy applied to probabilities
        return F.cross_entropy(probs, labels, reduction="none")
    return F.nll_loss(probs.clamp_min(_EPS).log(), labels, reduction="none")


def _renormalised(probs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A mixture's ``Σ λ_j softmax_j`` as a distribution. Scored raw, it rewards inflating
    every λ (measured: 2/3 of searched mixture weights ended on the ±bound); only the weights'
    ratio changes predictions, so that is what the logprob objective sees."""
    clamped = [p.clamp_min(_EPS) for p in probs]
    return [p / p.sum(-1, keepdim=True) for p in clamped]


def _scorer(
    encoder: DualEncoder, head: Composite, adapter: LoraAdapter, pooled: _Pooled
) -> Callable[[tuple[float, float]], float]:
    """Pooled loss of ``apply(head, adapter, w)``; a mixture reuses its members' outputs."""
    if head.mode != "mixture":
        return lambda w: pooled.loss(
            predict_proba_all(encoder, apply(head, adapter, w), pooled.tasks)
        )
    old = predict_proba_all(encoder, head, pooled.tasks) if not head.is_empty else None
    new = _softmax_all(encoder, delta_weights(adapter.modules), pooled.tasks)

    def mixture_loss(w: tuple[float, float]) -> float:
        if old is None:
            return pooled.loss([p * w[1] for p in new])
        return pooled.loss([o * w[0] + p * w[1] for o, p in zip(old, new, strict=True)])

    return mixture_loss


def _minimize(objective: Callable[[np.ndarray], float], cfg: SearchSettings) -> tuple[float, float]:
    # w1 (what is kept of the composite) lives in [keep_min, keep_max], w2 in ±bound: the
    # same ranges every node's validity check enforces.
    init = np.array([min(max(cfg.init, cfg.keep_min), cfg.keep_max), cfg.init])
    lower, upper = np.array([cfg.keep_min, -cfg.bound]), np.array([cfg.keep_max, cfg.bound])
    param = ng.p.Array(init=init, lower=lower, upper=upper)
    param.random_state = np.random.RandomState(cfg.seed)
    optimizer = ng.optimizers.NGOpt(parametrization=param, budget=cfg.budget)
    with warnings.catch_warnings():
        # NGOpt picks scipy's COBYLA for 2 parameters, which complains about its own defaults.
        warnings.filterwarnings("ignore", message="COBYLA", category=UserWarning)
        best = optimizer.minimize(objective).value
    w1, w2 = float(best[0]), float(best[1])
    if not (math.isfinite(w1) and math.isfinite(w2)):
        raise ArithmeticError(f"the optimizer recommended non-finite coefficients {best}")
    return w1, w2


def _refine(
    encoder: DualEncoder,
    head: Composite,
    adapter: LoraAdapter,
    pooled: _Pooled,
    cfg: SearchSettings,
    scalar: tuple[float, float],
    names: Sequence[str],
    calls: list[int],
) -> tuple[dict[str, tuple[float, float]], float]:
    """One pair per group in ``names``, from ``scalar`` in each: the best point scored (the
    start first, so never worse than it) and its pooled loss without the L1 term."""
    n = len(names)
    lower = np.tile([cfg.keep_min, -cfg.bound], n)
    upper = np.tile([cfg.keep_max, cfg.bound], n)
    best: list[Any] = [math.inf, None, math.inf]  # objective, pairs, loss

    def objective(x: np.ndarray) -> float:
        calls[0] += 1
        w = np.clip(np.asarray(x, dtype=np.float64), lower, upper)  # scored = what is recorded
        pairs = {g: (float(w[2 * k]), float(w[2 * k + 1])) for k, g in enumerate(names)}
        merged = apply(head, adapter, scalar, ModuleCoeffs(cfg.groups, pairs))
        loss = pooled.loss(predict_proba_all(encoder, merged, pooled.tasks))
        total = loss + cfg.l1 * sum(abs(v) for pair in pairs.values() for v in pair) / (2 * n)
        if total < best[0]:  # strictly: on ties the earlier point (the start) stays
            best[:] = [total, pairs, loss]
        return total

    start = np.tile(np.array(scalar, dtype=np.float64), n)
    objective(start)
    param = ng.p.Array(init=start, lower=lower, upper=upper)
    param.random_state = np.random.RandomState(cfg.seed)
    budget = cfg.group_budget or cfg.budget * n
    optimizer = ng.optimizers.NGOpt(parametrization=param, budget=budget)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="COBYLA", category=UserWarning)
        optimizer.minimize(objective)
    return best[1], best[2]


def _claim(before: float, after: float, evaluations: int) -> dict[str, float]:
    return {"loss_before": before, "loss_after": after, "evaluations": float(evaluations)}


# --- mixture shares (issue 12: a mixture search that earns it) ------------------------------
#
# Searched as the paper's two coefficients, a mixture is scale-invariant (only w2 / (w1·Σλ)
# changes its predictions) and the L1 term then pulls towards the cheapest point of equal
# predictions, w1 = keep_min and w2 → 0: measured on the ICD-10 tasks, the first arrival kept
# 0.49 of the mass on average (uniform: 0.33) and a third of the composites held a negative
# weight. ``search_mixture_share`` searches what a mixture is: the new member's share.

MIXTURE_PRIOR = 100.0  # pseudo-samples of the pull towards the uniform share (see below)


def search_mixture_share(
    encoder: DualEncoder,
    head: Composite,
    adapter: LoraAdapter,
    data: Sequence[TaskData],
    settings: SearchSettings | None = None,
    *,
    prior: float = MIXTURE_PRIOR,
) -> SearchResult:
    """Mixture coefficients ``(1 - s, s)``: the plugin's share ``s`` of a convex mixture.

    Onto a head whose weights sum to 1 (every head this search built: the first commit gives
    ``[1.0]``) the weights stay a distribution. ``s`` lies in ``[1 - keep_max, 1 - keep_min]``
    (and ``<= bound``), so the pair passes every node's range check, and the fold rule is the
    mixture's own (``λ ← [w1·λ, w2]``): nothing changes for the nodes. The objective is the
    renormalised negative log-likelihood (``"logprob"``) over the pooled distilled data, plus
    a Beta prior on the plugin's effective share ``q`` with its mode at the uniform share
    ``u = 1/(k+1)`` (``k`` members before it) and ``prior`` pseudo-samples of weight:
    ``prior/N · KL(Bern(u) ‖ Bern(q))``, zero at ``u``. Distilled sets of a few inputs per
    class are weak evidence about a member's value (measured: their optimum sits far from the
    test set's); the prior keeps the search at the uniform mixture until they say otherwise.
    Deterministic: ``budget`` grid points plus ``u``, then ``budget`` golden-section steps.
    """
    cfg = settings or SearchSettings()
    if head.mode != "mixture":
        raise ValueError(f"a share is a mixture's coefficient, not a {head.mode} one")
    with torch.no_grad():
        pooled = _Pooled(encoder, data, "logprob", mixture=True)
        before = pooled.loss(predict_proba_all(encoder, head, pooled.tasks))
        score = _scorer(encoder, head, adapter, pooled)
        if head.is_empty:
            return SearchResult((1.0, 1.0), _claim(before, score((1.0, 1.0)), 0))
        total, k = sum(head.weights), len(head.members)
        n = sum(len(y) for y in pooled.labels)

        def objective(s: float) -> float:
            q = s / ((1.0 - s) * total + s) if s > 0 else 0.0
            return score(_share_pair(s, cfg)) + prior / n * _kl_bernoulli(1.0 / (k + 1), q)

        s, evaluations = _minimize_share(objective, _share_range(cfg), 1.0 / (k + 1), cfg.budget)
        pair = _share_pair(s, cfg)
        return SearchResult(pair, _claim(before, score(pair), evaluations))


def _share_range(cfg: SearchSettings) -> tuple[float, float]:
    lo, hi = max(0.0, 1.0 - cfg.keep_max), min(1.0 - cfg.keep_min, cfg.bound)
    if hi < lo:
        raise ValueError(f"keep range [{cfg.keep_min}, {cfg.keep_max}] leaves no share")
    return lo, hi


def _share_pair(s: float, cfg: SearchSettings) -> tuple[float, float]:
    """``(1 - s, s)`` with ``w1`` clamped into the keep range against rounding."""
    return min(max(1.0 - s, cfg.keep_min), cfg.keep_max), s


def _kl_bernoulli(u: float, q: float) -> float:
    q = min(max(q, _EPS), 1.0 - _EPS)
    return u * math.log(u / q) + (1.0 - u) * math.log((1.0 - u) / (1.0 - q))


def _minimize_share(
    f: Callable[[float], float], bounds: tuple[float, float], uniform: float, budget: int
) -> tuple[float, int]:
    """A grid of ``budget`` points (and ``uniform`` if inside), then golden-section search
    around the best; ties keep the earlier point. Returns ``(s, evaluations)``."""
    lo, hi = bounds
    points = [lo + (hi - lo) * i / max(budget - 1, 1) for i in range(max(budget, 2))]
    if lo <= uniform <= hi:
        points = sorted({*points, uniform})
    values = [f(p) for p in points]
    i = min(range(len(points)), key=lambda j: values[j])
    best, best_value = points[i], values[i]
    a, b = points[max(i - 1, 0)], points[min(i + 1, len(points) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(budget // 2):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        fc, fd = f(c), f(d)
        for x, v in ((c, fc), (d, fd)):
            if v < best_value:
                best, best_value = x, v
        a, b = (a, d) if fc <= fd else (c, b)
    return best, len(points) + 2 * (budget // 2)
