"""node.forge.claim: the per-task accuracy a commit's objective carries, and the drop rule."""

from __future__ import annotations

import pytest

from node.forge.claim import (
    AFTER,
    BEFORE,
    MAX_OBJECTIVE,
    TaskAccuracy,
    decode,
    encode,
    unique_names,
    warnings,
)


@pytest.mark.parametrize(
    ("before", "after", "dropped"),
    [
        (0.81, 0.00, True),  # to zero
        (0.81, 0.60, True),  # by more than 0.2
        (0.81, 0.62, False),  # by less, and above half
        (0.30, 0.14, True),  # to below half
        (0.30, 0.16, False),
        (0.00, 0.00, False),  # nothing served: nothing falls
        (0.50, 0.90, False),
    ],
)
def test_a_served_task_that_falls_sharply_is_warned_about(
    before: float, after: float, dropped: bool
) -> None:
    assert TaskAccuracy("lung", before, after).dropped is dropped
    assert TaskAccuracy("lung", before, after, own=True).dropped is False  # not served before


def test_the_warning_names_the_task_and_both_figures() -> None:
    figures = [TaskAccuracy("breast", 0.5, 1.0, own=True), TaskAccuracy("lung", 0.81, 0.0)]
    assert warnings(figures) == ["warning: task lung falls from 0.81 to 0.00 on its distilled set"]


def test_the_objective_round_trips_and_old_commits_have_no_figures() -> None:
    own = TaskAccuracy("", 0.25, 0.75, own=True)
    served = [TaskAccuracy("lung", 0.8, 0.1), TaskAccuracy("lung#2", 0.5, 0.5)]
    entries = encode(own, served, used=3)
    assert entries == {
        BEFORE: 0.25,
        AFTER: 0.75,
        f"{BEFORE}:lung": 0.8,
        f"{AFTER}:lung": 0.1,
        f"{BEFORE}:lung#2": 0.5,
        f"{AFTER}:lung#2": 0.5,
    }
    objective = {"loss_before": 1.0, "loss_after": 0.5, "evaluations": 40.0, **entries}
    assert decode(objective, "breast") == [TaskAccuracy("breast", 0.25, 0.75, own=True), *served]
    assert decode({"loss_before": 1.0, "loss_after": 0.5, "evaluations": 40.0}, "t") == []
    assert decode({}, "t") == []


def test_only_what_fits_is_recorded_and_the_worst_drops_first() -> None:
    own = TaskAccuracy("", 0.3, 0.9, own=True)
    served = [TaskAccuracy(f"t{k}", 0.9, 0.9 - k / 100) for k in range(40)]
    entries = encode(own, served, used=4)
    assert len(entries) + 4 <= MAX_OBJECTIVE
    kept = {f.task for f in decode(entries, "own") if not f.own}
    assert kept == {f"t{k}" for k in range(27, 40)}  # the 13 that fell most


def test_a_name_used_twice_is_numbered() -> None:
    assert unique_names(["a", "b", "a", "a"]) == ["a", "b", "a#2", "a#3"]
