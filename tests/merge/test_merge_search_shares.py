"""The mixture searched as the new member's convex share (``search_mixture_share``)."""

from __future__ import annotations

import pytest
import torch
from test_merge_search import DATA, ENC, L1, L2, pooled_loss, probs_of

from merge.fold import apply, empty, single_task
from merge.pipeline.search import search_mixture_share
from merge.spec import SearchSettings

SETTINGS = SearchSettings(budget=12)


def test_first_commit_takes_one_one_without_searching() -> None:
    result = search_mixture_share(ENC, empty("mixture"), L1, DATA[:1], SETTINGS)
    assert result.coeffs == (1.0, 1.0)
    assert result.objective["evaluations"] == 0.0


def test_weights_stay_a_distribution_inside_every_node_s_ranges() -> None:
    head = single_task("mixture", L1)
    for prior in (0.0, 3.0, 100.0):
        w1, w2 = search_mixture_share(ENC, head, L2, DATA, SETTINGS, prior=prior).coeffs
        assert SETTINGS.keep_min <= w1 <= SETTINGS.keep_max
        assert 0.0 <= w2 <= 1.0 - SETTINGS.keep_min
        assert w1 == 1.0 - w2
        assert sum(apply(head, L2, (w1, w2)).weights) == pytest.approx(1.0, abs=1e-15)


def test_a_strong_prior_gives_the_uniform_mixture_exactly() -> None:
    two = apply(single_task("mixture", L1), L2, (0.5, 0.5))
    result = search_mixture_share(ENC, two, L1, DATA, SETTINGS, prior=1e9)
    assert result.coeffs == (1.0 - 1.0 / 3.0, 1.0 / 3.0)


def test_without_prior_it_is_the_likelihood_optimum_of_the_grid_and_re_evaluates() -> None:
    head = single_task("mixture", L1)
    result = search_mixture_share(ENC, head, L2, DATA, SETTINGS, prior=0.0)
    p1 = probs_of(single_task("fusion", L1))
    p2 = probs_of(single_task("fusion", L2))

    def loss(s: float) -> float:
        mixed = [(x * (1.0 - s) + y * s).clamp_min(1e-12) for x, y in zip(p1, p2, strict=True)]
        return pooled_loss(mixed, "logprob", mixture=True)

    s = result.coeffs[1]
    assert result.objective["loss_after"] == pytest.approx(loss(s), rel=1e-6)
    grid = [0.5 * i / (SETTINGS.budget - 1) for i in range(SETTINGS.budget)]
    assert all(loss(s) <= loss(g) + 1e-7 for g in grid)


def test_deterministic_without_any_seed() -> None:
    head = single_task("mixture", L1)
    first = search_mixture_share(ENC, head, L2, DATA, SETTINGS)
    again = search_mixture_share(ENC, head, L2, DATA, SETTINGS)
    assert first == again


def test_refuses_a_head_that_is_not_a_mixture() -> None:
    with pytest.raises(ValueError, match="mixture"):
        search_mixture_share(ENC, single_task("stack", L1), L2, DATA, SETTINGS)


def test_the_claim_starts_from_the_head() -> None:
    head = single_task("mixture", L1)
    result = search_mixture_share(ENC, head, L2, DATA, SETTINGS)
    before = pooled_loss(probs_of(head), "logprob", mixture=True)
    assert result.objective["loss_before"] == pytest.approx(before, rel=1e-6)
    assert torch.isfinite(torch.tensor(result.objective["loss_after"]))
