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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import nevergrad as ng
import numpy as np
import torch
import torch.nn.functional as F

from merge.fold import Composite, apply, delta_weights
from merge.lora import LoraAdapter
from merge.pipeline.backends.base import DualEncoder, cosine_logits
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


def search_coeffs(
    encoder: DualEncoder,
    head: Composite,
    adapter: LoraAdapter,
    data: Sequence[TaskData],
    settings: SearchSettings | None = None,
) -> SearchResult:
    """Coefficients ``(w1, w2)`` for ``apply(head, adapter, ·)``; seeded, budgeted.

    ``loss_before`` is the head's pooled loss, ``loss_after`` the merged candidate's at the
    chosen coefficients (both without the L1 term). An empty head takes ``(1.0, 1.0)``
    without searching (``evaluations`` = 0).
    """
    cfg = settings or SearchSettings()
    with torch.no_grad():
        pooled = _Pooled(encoder, data, cfg.objective, mixture=head.mode == "mixture")
        before = pooled.loss(predict_proba_all(encoder, head, pooled.tasks))
        score = _scorer(encoder, head, adapter, pooled)
        if head.is_empty:
            return SearchResult((1.0, 1.0), _claim(before, score((1.0, 1.0)), 0))
        calls = [0]

        def objective(x: np.ndarray) -> float:
            calls[0] += 1
            w = (float(x[0]), float(x[1]))
            return score(w) + cfg.l1 * (abs(w[0]) + abs(w[1])) / 2

        w1, w2 = _minimize(objective, cfg)
        return SearchResult((w1, w2), _claim(before, score((w1, w2)), calls[0]))


def predict_proba(
    encoder: DualEncoder, c: Composite, inputs: torch.Tensor, class_features: torch.Tensor
) -> torch.Tensor:
    """``P(y | x)`` of a composite on one task (mixture: one forward pass per member)."""
    return predict_proba_all(encoder, c, [(inputs, class_features)])[0]


def predict_proba_all(
    encoder: DualEncoder, c: Composite, tasks: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """``P(y | x)`` per task for ``[(inputs, class features), ...]``; no autograd graph."""
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
    """The pooled distilled data with each task's frozen class features computed once."""

    def __init__(
        self, encoder: DualEncoder, data: Sequence[TaskData], objective: str, mixture: bool
    ) -> None:
        if not data:
            raise ValueError("the search needs distilled data of at least one task")
        self.tasks = [(d.inputs, encoder.encode_classes(d.classes)) for d in data]
        self.labels = [d.labels.to(torch.int64) for d in data]
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


def _claim(before: float, after: float, evaluations: int) -> dict[str, float]:
    return {"loss_before": before, "loss_after": after, "evaluations": float(evaluations)}
