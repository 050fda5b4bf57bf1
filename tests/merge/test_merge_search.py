"""The author's coefficient search, on a tiny real dual encoder (seeded Linear layers)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from merge_fixtures import random_adapter
from torch import nn

from merge.fold import apply, delta_weights, empty, single_task
from merge.pipeline.search import DistilledSet, SearchResult, predict_proba, search_coeffs
from merge.spec import SearchSettings

torch.set_num_threads(1)


class TinyDualEncoder:
    """Input tower: two Linear layers; class tower: a frozen seeded embedding per name."""

    def __init__(self, seed: int = 0, d_in: int = 6, hidden: int = 10, dim: int = 8) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.tower = nn.Module()
        self.tower.fc1 = nn.Linear(d_in, hidden)
        self.tower.fc2 = nn.Linear(hidden, dim)
        with torch.no_grad():
            for _, p in sorted(self.tower.named_parameters()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.dim = dim

    fingerprint = "tiny-dual"
    lora_targets = ("fc1", "fc2")
    logit_scale = 10.0
    input_kind = "text-embeds"

    def encode_inputs(
        self, inputs: torch.Tensor, delta: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        weights = {k: getattr(self.tower, k).weight for k in (delta or {})}
        params = {f"{k}.weight": w + (delta or {})[k] for k, w in weights.items()}

        def forward(x: torch.Tensor) -> torch.Tensor:
            return self.tower.fc2(torch.tanh(self.tower.fc1(x)))

        self.tower.forward = forward
        out = torch.func.functional_call(self.tower, params, (inputs,), strict=False)
        return F.normalize(out, dim=-1)

    def encode_classes(self, classes: Sequence[str]) -> torch.Tensor:
        rows = []
        for name in classes:
            seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(rows), dim=-1)


ENC = TinyDualEncoder()
SHAPES = {"fc1": (10, 6), "fc2": (8, 10)}
L1 = random_adapter(11, SHAPES, {"fc1": 2, "fc2": 2})
L2 = random_adapter(12, SHAPES, {"fc1": 3})


def task(seed: int, classes: tuple[str, ...], n: int = 12) -> DistilledSet:
    gen = torch.Generator().manual_seed(seed)
    return DistilledSet(
        torch.randn(n, 6, generator=gen), torch.randint(len(classes), (n,), generator=gen), classes
    )


DATA = [task(1, ("pneumonia", "normal")), task(2, ("benign", "malignant", "unclear"))]


def pooled_loss(c_probs: list[torch.Tensor], objective: str, mixture: bool = False) -> float:
    if mixture and objective == "logprob":  # the search scores a mixture as a distribution
        c_probs = [p / p.sum(-1, keepdim=True) for p in c_probs]
    pairs = list(zip(c_probs, [d.labels for d in DATA], strict=True))
    if objective == "paper":
        losses = [F.cross_entropy(p, y, reduction="none") for p, y in pairs]
    else:
        losses = [-p.gather(1, y[:, None]).squeeze(1).log() for p, y in pairs]
    return float(torch.cat(losses).mean())


def probs_of(c: object) -> list[torch.Tensor]:
    return [
        predict_proba(ENC, c, d.inputs, ENC.encode_classes(d.classes))  # type: ignore[arg-type]
        for d in DATA
    ]


def test_first_commit_takes_one_one_without_searching() -> None:
    result = search_coeffs(ENC, empty("fusion"), L1, DATA)
    assert result.coeffs == (1.0, 1.0)
    assert result.objective["evaluations"] == 0.0
    with torch.no_grad():
        base = [
            torch.softmax(
                ENC.logit_scale * ENC.encode_inputs(d.inputs) @ ENC.encode_classes(d.classes).T, -1
            )
            for d in DATA
        ]
    assert result.objective["loss_before"] == pooled_loss(base, "logprob")
    assert result.objective["loss_after"] == pooled_loss(
        probs_of(single_task("fusion", L1)), "logprob"
    )


def test_a_stack_plugin_trained_on_the_head_takes_one_one_without_searching() -> None:
    """(1, 1) is then the model that was trained; its claim is scored there. Fusion folds
    the factors, so (1, 1) is not what was trained: it still searches."""
    settings = SearchSettings(budget=8)
    stack = single_task("stack", L1)
    result = search_coeffs(ENC, stack, L2, DATA, settings, trained_on_head=True)
    assert result.coeffs == (1.0, 1.0)
    assert result.objective["evaluations"] == 0.0
    assert result.objective["loss_after"] == pooled_loss(
        probs_of(apply(stack, L2, (1.0, 1.0))), "logprob"
    )
    assert search_coeffs(ENC, stack, L2, DATA, settings).objective["evaluations"] == 8.0
    fusion = search_coeffs(ENC, single_task("fusion", L1), L2, DATA, settings, trained_on_head=True)
    assert fusion.objective["evaluations"] == 8.0


def test_search_is_seeded_bounded_budgeted_and_its_claim_re_evaluates_exactly() -> None:
    head = single_task("fusion", L1)
    settings = SearchSettings(budget=40, seed=7)
    one = search_coeffs(ENC, head, L2, DATA, settings)
    two = search_coeffs(ENC, head, L2, DATA, settings)
    assert isinstance(one, SearchResult)
    assert one == two
    assert one.objective["evaluations"] == 40.0
    assert all(-1.5 <= w <= 1.5 and isinstance(w, float) for w in one.coeffs)
    merged = apply(head, L2, one.coeffs)
    assert one.objective["loss_after"] == pooled_loss(probs_of(merged), "logprob")
    assert one.objective["loss_before"] == pooled_loss(probs_of(head), "logprob")

    # The optimizer starts at init (0.5, 0.5); what it returns is at least as good there.
    def total(w: tuple[float, float], loss: float) -> float:
        return loss + 0.05 * (abs(w[0]) + abs(w[1])) / 2

    at_init = pooled_loss(probs_of(apply(head, L2, (0.5, 0.5))), "logprob")
    assert total(one.coeffs, one.objective["loss_after"]) <= total((0.5, 0.5), at_init)


def test_paper_objective_is_cross_entropy_on_probabilities() -> None:
    head = single_task("stack", L1)
    result = search_coeffs(ENC, head, L2, DATA, SearchSettings(objective="paper", budget=8))
    assert result.objective["evaluations"] == 8.0
    assert result.objective["loss_before"] == pooled_loss(probs_of(head), "paper")
    merged = apply(head, L2, result.coeffs)
    assert result.objective["loss_after"] == pooled_loss(probs_of(merged), "paper")
    # CE on probabilities lives in a narrow band around log C; the true NLL does not.
    assert result.objective["loss_after"] != pooled_loss(probs_of(merged), "logprob")


def test_mixture_search_scores_the_weighted_member_probabilities() -> None:
    head = single_task("mixture", L1)
    result = search_coeffs(ENC, head, L2, DATA, SearchSettings(budget=12))
    a, b = result.coeffs
    merged = apply(head, L2, (a, b))
    assert merged.weights == (a, b)
    p1 = probs_of(single_task("fusion", L1))
    p2 = probs_of(single_task("fusion", L2))
    expected = [x * a + y * b for x, y in zip(p1, p2, strict=True)]
    for got, want in zip(probs_of(merged), expected, strict=True):
        torch.testing.assert_close(got, want)
    assert max(abs(a), abs(b)) < 1.5  # the renormalised objective no longer rides the bound
    assert result.objective["loss_after"] == pooled_loss(
        [(x * a + y * b).clamp_min(1e-12) for x, y in zip(p1, p2, strict=True)],
        "logprob",
        mixture=True,
    )


def test_delta_weights_used_by_the_search_are_b_times_a() -> None:
    dw = delta_weights(L1.modules)
    assert set(dw) == {"fc1", "fc2"}
    torch.testing.assert_close(dw["fc1"], L1.modules["fc1"].B @ L1.modules["fc1"].A)


# --- per-module groups (issue 12) ----------------------------------------------------------


def test_group_search_refines_the_scalar_optimum_per_group_and_is_never_worse() -> None:
    from merge.groups import ModuleCoeffs

    head = single_task("stack", L1)
    scalar = search_coeffs(ENC, head, L2, DATA, SearchSettings(budget=12, seed=3))
    cfg = SearchSettings(budget=12, seed=3, groups="target", group_budget=16)
    one = search_coeffs(ENC, head, L2, DATA, cfg)
    assert one == search_coeffs(ENC, head, L2, DATA, cfg)  # seeded
    assert one.coeffs == scalar.coeffs  # the scalar search is today's, then refined
    assert scalar.module_coeffs is None
    assert one.module_coeffs is not None
    assert sorted(one.module_coeffs) == ["fc1", "fc2"]
    assert one.objective["loss_scalar"] == scalar.objective["loss_after"]
    assert one.objective["evaluations"] == 12 + 1 + 16  # scalar, the start, the refinement
    for w1, w2 in one.module_coeffs.values():
        assert 0.5 <= w1 <= 1.0
        assert abs(w2) <= 1.5
        assert type(w1) is float
        assert type(w2) is float
    # The claim re-evaluates exactly on the fold every node runs.
    merged = apply(head, L2, one.coeffs, ModuleCoeffs("target", one.module_coeffs))
    assert one.objective["loss_after"] == pooled_loss(probs_of(merged), "logprob")

    def total(loss: float, ws: list[float]) -> float:
        return loss + 0.05 * sum(abs(w) for w in ws) / len(ws)

    pairs = [w for pair in one.module_coeffs.values() for w in pair]
    refined = total(one.objective["loss_after"], pairs)
    assert refined <= total(scalar.objective["loss_after"], list(scalar.coeffs) * 2)


def test_group_search_applies_only_where_groups_exist() -> None:
    head = single_task("fusion", L1)
    # "layer" finds no layer index in fc1/fc2: nothing to refine, the scalar result alone.
    layer = search_coeffs(ENC, head, L2, DATA, SearchSettings(budget=6, groups="layer"))
    assert layer.module_coeffs is None
    assert layer == search_coeffs(ENC, head, L2, DATA, SearchSettings(budget=6))
    # The first commit is not searched, with or without groups.
    first = search_coeffs(ENC, empty("stack"), L1, DATA, SearchSettings(groups="target"))
    assert (first.coeffs, first.module_coeffs) == ((1.0, 1.0), None)
    # A mixture weights members' outputs: no per-module pairs, whatever the settings say.
    mixture = search_coeffs(
        ENC, single_task("mixture", L1), L2, DATA, SearchSettings(budget=6, groups="target")
    )
    assert mixture.module_coeffs is None
