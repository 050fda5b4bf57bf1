"""Classification metrics on class probabilities: accuracy and macro one-vs-rest AUC."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Metrics:
    """Accuracy and macro AUC (NaN when no class has both positives and negatives)."""

    accuracy: float
    auc: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "auc": self.auc, "n": float(self.n)}


def binary_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Mann-Whitney AUC with average ranks for ties (what sklearn's roc_auc_score gives)."""
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores.double())
    rank_sum = float(ranks[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    i = 0
    n = x.numel()
    while i < n:
        j = i
        while j + 1 < n and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1  # 1-based average rank of the tie group
        i = j + 1
    return ranks


def macro_auc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean one-vs-rest AUC over the classes that have both positives and negatives."""
    aucs = [binary_auc(probs[:, c], labels == c) for c in range(probs.shape[1])]
    defined = [a for a in aucs if not math.isnan(a)]
    return sum(defined) / len(defined) if defined else math.nan


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> Metrics:
    """Accuracy (argmax; ties go to the lowest class) and macro AUC of ``probs [n, c]``."""
    accuracy = float((probs.argmax(dim=1) == labels).double().mean()) if len(labels) else math.nan
    return Metrics(accuracy=accuracy, auc=macro_auc(probs, labels), n=int(labels.numel()))
