"""Per-task accuracy in a commit's claim, and the rule that warns when a task drops.

The author scores the head and the merged candidate (at the coefficients it signs) on each
distilled set the search pooled, and records the accuracies in the commit's ``objective``
(a mapping of names to finite numbers, at most ``MAX_OBJECTIVE`` of them: crypto.records)::

    acc_before, acc_after            the commit's own task: head -> merged
    acc_before:<task>, acc_after:<task>   each task merged before it (a second distilled
                                     set under one name: <task>#2, ...)

A commit without these keys (made before issue 15, or with ``--coeffs`` unscored) has no
per-task figures; nothing else changes, so old commits stay valid. Where more tasks were
merged than the objective has room for, the ones that dropped most are kept.

A task *served before* (merged into the head) that falls sharply, by more than ``DROP_BY``
or to less than ``DROP_TO`` of what it was, is named in a warning, by `medforge commit` and
again per item by `medforge log`. Pure: no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_OBJECTIVE = 32  # crypto.records: an objective maps at most 32 names to numbers
BEFORE, AFTER = "acc_before", "acc_after"
DROP_BY = 0.2  # a served task falling by more than this ...
DROP_TO = 0.5  # ... or to less than this fraction of what it was is warned about


@dataclass(frozen=True)
class TaskAccuracy:
    """Accuracy on one task's distilled set: the head's (``before``) and the merged
    candidate's (``after``). ``own``: the commit's own task (not served before)."""

    task: str
    before: float
    after: float
    own: bool = False

    @property
    def dropped(self) -> bool:
        """Sharply lower after the merge (never the commit's own task: it was not served)."""
        fall = self.before - self.after
        return not self.own and fall > 0 and (fall > DROP_BY or self.after < DROP_TO * self.before)

    def warning(self) -> str:
        return (
            f"warning: task {self.task} falls from {self.before:.2f} to {self.after:.2f} "
            "on its distilled set"
        )

    def as_dict(self) -> dict[str, str | float | bool]:
        return {"task": self.task, "before": self.before, "after": self.after, "own": self.own}


def unique_names(tasks: Sequence[str]) -> list[str]:
    """``tasks`` with a repeated name numbered from its second use on (``t``, ``t#2``)."""
    seen: dict[str, int] = {}
    names = []
    for task in tasks:
        seen[task] = seen.get(task, 0) + 1
        names.append(task if seen[task] == 1 else f"{task}#{seen[task]}")
    return names


def encode(own: TaskAccuracy, merged: Sequence[TaskAccuracy], used: int) -> dict[str, float]:
    """The objective entries for ``own`` and as many of ``merged`` as fit beside the ``used``
    entries already there (the tasks that dropped most first)."""
    room = max(MAX_OBJECTIVE - used - 2, 0) // 2
    order = sorted(range(len(merged)), key=lambda k: (merged[k].after - merged[k].before, k))
    kept = sorted(order[:room])
    entries = {BEFORE: own.before, AFTER: own.after}
    for k in kept:
        entries[f"{BEFORE}:{merged[k].task}"] = merged[k].before
        entries[f"{AFTER}:{merged[k].task}"] = merged[k].after
    return entries


def decode(objective: Mapping[str, float], task: str) -> list[TaskAccuracy]:
    """The per-task figures of a commit for ``task`` (its own task name) from its objective:
    its own first, then the tasks merged before it; ``[]`` when it records none."""
    figures = []
    if BEFORE in objective and AFTER in objective:
        figures.append(TaskAccuracy(task, objective[BEFORE], objective[AFTER], own=True))
    for key, after in objective.items():
        name, sep, merged = key.partition(":")
        before = objective.get(f"{BEFORE}:{merged}")
        if name == AFTER and sep and before is not None:
            figures.append(TaskAccuracy(merged, float(before), float(after)))
    return figures


def warnings(figures: Sequence[TaskAccuracy]) -> list[str]:
    return [f.warning() for f in figures if f.dropped]


def describe(figures: Sequence[TaskAccuracy]) -> str:
    """``second (own) 0.33 -> 1.00; first 0.83 -> 0.17`` (head -> merged)."""
    return "; ".join(
        f"{f.task}{' (own)' if f.own else ''} {f.before:.2f} -> {f.after:.2f}" for f in figures
    )
