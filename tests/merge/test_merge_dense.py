"""Compaction (issue 13): the exact product, the policy, the compacted fold and its digest.

Determinism is checked on bytes (``numpy().tobytes()`` also tells -0.0 from +0.0, which
``torch.equal`` does not); tolerances appear only where accuracy, not determinism, is tested.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from merge_fixtures import random_adapter

from merge import dense
from merge.compaction import Compaction
from merge.dense import DenseModule, accumulate, exact_product, slice_bits
from merge.digest import composite_digest
from merge.errors import ModeError, SpecError
from merge.fold import Composite, apply, empty, fold, uniform_average
from merge.groups import ModuleCoeffs
from merge.lora import LoraAdapter, LoraModule
from merge.spec import MergeSpec

SHAPES = {"enc.q": (16, 12), "enc.v": (16, 12), "head": (5, 12)}
RANKS = {"enc.q": 2, "enc.v": 2, "head": 1}
CROSSOVER = Compaction()


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().tobytes()


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _factors(seed: int, out: int, k: int, inp: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Rows and columns of very different scales: what the per-row exponents are for.
    b = torch.randn(out, k, generator=g) * torch.logspace(-6, 3, out).unsqueeze(1)
    a = torch.randn(k, inp, generator=g) * torch.logspace(2, -5, inp)
    return b, a


# --- exact_product --------------------------------------------------------------------------


def test_exact_product_bytes_do_not_depend_on_threads_or_layout(threads: None) -> None:
    b, a = _factors(1, 300, 160, 257)
    torch.set_num_threads(1)
    one = raw(exact_product(b, a))
    torch.set_num_threads(2)
    assert raw(exact_product(b, a)) == one
    transposed = (b.t().contiguous().t(), a.t().contiguous().t())  # column-major storage
    assert not transposed[0].is_contiguous()
    assert raw(exact_product(*transposed)) == one
    wide_b, wide_a = torch.zeros(300, 320), torch.zeros(160, 514)
    wide_b[:, ::2], wide_a[:, ::2] = b, a  # strided views into larger buffers
    assert raw(exact_product(wide_b[:, ::2], wide_a[:, ::2])) == one


def test_exact_product_is_as_accurate_as_float32() -> None:
    b, a = _factors(2, 64, 48, 40)
    ref = b.double() @ a.double()
    got = exact_product(b, a)
    assert got.dtype == torch.float32
    # Error bound of the slice: K·2^-β relative to the row's and column's largest entries.
    scale = b.abs().amax(1, keepdim=True).double() * a.abs().amax(0, keepdim=True).double()
    err = (got.double() - ref).abs()
    assert bool((err <= scale * 48 * 2.0 ** -slice_bits(48) + ref.abs() * 2.0**-23).all())
    # ... which is a float32 matmul's accuracy: measured against the same scale.
    blas = ((b @ a).double() - ref).abs() / scale
    assert float((err / scale).max()) <= max(4 * float(blas.max()), 2.0**-20)


def test_exact_product_zero_rows_columns_and_inner_dimension() -> None:
    b, a = _factors(3, 6, 4, 5)
    b[2], a[:, 3] = 0.0, 0.0
    got = exact_product(b, a)
    assert raw(got[2]) == raw(torch.zeros(5))
    assert raw(got[:, 3]) == raw(torch.zeros(6))
    empty_k = exact_product(torch.zeros(3, 0), torch.zeros(0, 4))
    assert raw(empty_k) == raw(torch.zeros(3, 4))
    # -1·0 is -0.0 on some kernels (here: K = 1), +0.0 on others: the product says +0.0.
    signed = exact_product(-torch.ones(4, 1), torch.zeros(1, 5))
    assert not bool(torch.signbit(signed).any())


def test_exact_product_of_extreme_float32_scales_is_the_float64_truncation() -> None:
    # Rows (columns) from subnormal to near float32's top: each is truncated to β bits
    # below its own largest element, so the result equals a float64 reference computed on
    # the same truncated integers (exact: every partial sum is below 2^52 units).
    g = torch.Generator().manual_seed(4)
    b = (
        torch.randn(6, 3, generator=g).double()
        * torch.tensor([1e-44, 1e-40, 1e-30, 1.0, 1e20, 1e37], dtype=torch.float64).unsqueeze(1)
    ).float()
    a = (
        torch.randn(3, 4, generator=g).double()
        * torch.tensor([1e-41, 1e-3, 1e3, 1e30], dtype=torch.float64)
    ).float()
    beta = slice_bits(3)

    def truncated(x: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        e = torch.frexp(peak.double())[1].double()
        return torch.trunc(x.double() * 2.0 ** (beta - e)) * 2.0 ** (e - beta)

    ref = truncated(b, b.abs().amax(1, keepdim=True)) @ truncated(a, a.abs().amax(0))
    assert raw(exact_product(b, a)) == raw(torch.add(ref.float(), 0.0))
    with pytest.raises(TypeError, match="float32"):
        exact_product(b.double(), a)


def test_dense_modules_are_2d_float32() -> None:
    with pytest.raises(TypeError):
        DenseModule(torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(TypeError):
        DenseModule(torch.zeros(3))
    assert DenseModule(torch.zeros(3, 4)).shape == (3, 4)


# --- the policy and where the fold switches -------------------------------------------------


def test_the_crossover_and_a_fixed_rank() -> None:
    assert not CROSSOVER.due(3, (8, 8))
    assert CROSSOVER.due(4, (8, 8))
    assert not CROSSOVER.due(383, (768, 768))
    assert CROSSOVER.due(384, (768, 768))
    assert not Compaction(5).due(5, (8, 8))
    assert Compaction(5).due(6, (8, 8))
    with pytest.raises(SpecError):
        Compaction(-1)
    assert Compaction.of(MergeSpec(mode="stack")) is None
    assert Compaction.of(MergeSpec(mode="stack", compaction="auto", compact_rank=7)) == Compaction(
        7
    )


def _rank_one(seed: int) -> LoraAdapter:
    return random_adapter(seed, {"w": (8, 8)}, {"w": 1})


@pytest.mark.parametrize(("policy", "switch"), [(CROSSOVER, 4), (Compaction(5), 6)])
def test_a_module_turns_dense_exactly_at_the_threshold(policy: Compaction, switch: int) -> None:
    c = plain = empty("stack")
    for k in range(1, 9):
        coeffs = (0.75, 1.25 - k / 16)
        prev, c = c, apply(c, _rank_one(k), coeffs, compaction=policy)
        plain = apply(plain, _rank_one(k), coeffs)
        m = c.modules["w"]
        if k < switch:
            assert isinstance(m, LoraModule)
            assert m.rank == k
            assert composite_digest(c) == composite_digest(plain)
        elif k == switch:  # built as factors, then converted: exactly their product
            assert isinstance(m, DenseModule)
            p = plain.modules["w"]
            assert isinstance(p, LoraModule)
            assert raw(m.W) == raw(exact_product(p.B, p.A))
        else:  # W' = W·t1 + exact((t2·B_new) A_new), mul then add
            new = _rank_one(k).modules["w"]
            t1, t2 = (torch.tensor(w, dtype=torch.float32) for w in coeffs)
            old = prev.modules["w"]
            assert isinstance(m, DenseModule)
            assert isinstance(old, DenseModule)
            want = torch.add(torch.mul(old.W, t1), exact_product(torch.mul(new.B, t2), new.A))
            assert raw(m.W) == raw(want)


def test_a_dense_module_absent_from_a_commit_is_only_scaled() -> None:
    policy = Compaction(1)
    c = apply(empty("stack"), random_adapter(1, SHAPES, RANKS), (1.0, 1.0), compaction=policy)
    dense = c.modules["enc.q"]
    assert isinstance(dense, DenseModule)
    only_head = random_adapter(2, SHAPES, {"head": 1})
    after = apply(c, only_head, (0.5, 1.0), compaction=policy).modules["enc.q"]
    assert isinstance(after, DenseModule)
    assert raw(after.W) == raw(torch.mul(dense.W, torch.tensor(0.5, dtype=torch.float32)))
    # Without a policy a dense module stays dense (it only stops new conversions).
    again = apply(c, only_head, (0.5, 1.0)).modules["enc.q"]
    assert isinstance(again, DenseModule)
    assert raw(again.W) == raw(after.W)


def _steps(n: int) -> list[tuple[LoraAdapter, tuple[float, float]]]:
    return [
        (random_adapter(100 + k, SHAPES, RANKS), (1.0 - 1 / (k + 3), 0.25 + k / 64))
        for k in range(n)
    ]


def test_a_compacted_fold_is_one_digest_however_it_is_built(threads: None) -> None:
    steps = _steps(24)
    torch.set_num_threads(1)
    folded = fold("stack", steps, compaction=CROSSOVER)
    assert all(isinstance(m, DenseModule) for m in folded.modules.values())
    assert "dense=3" in repr(folded)
    torch.set_num_threads(2)
    assert composite_digest(fold("stack", steps, compaction=CROSSOVER)) == composite_digest(folded)
    c = empty("stack")
    for adapter, coeffs in steps:  # incrementally, as a node's composer extends its tip
        c = apply(c, adapter, coeffs, compaction=CROSSOVER)
    assert composite_digest(c) == composite_digest(folded)
    # ... and it is the composite: ΔW within float32 accuracy of the exact stack.
    exact = fold("stack", steps)
    for name, m in folded.modules.items():
        e = exact.modules[name]
        assert isinstance(m, DenseModule)
        assert isinstance(e, LoraModule)
        ref = e.B.double() @ e.A.double()
        torch.testing.assert_close(m.W.double(), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_per_group_pairs_and_uniform_average_pass_the_policy_through() -> None:
    steps = _steps(4)
    pairs = ModuleCoeffs("target", {"q": (0.5, 0.5)})
    c = empty("stack")
    for adapter, coeffs in steps:
        c = apply(c, adapter, coeffs, pairs, compaction=Compaction(3))
    assert isinstance(c.modules["enc.q"], DenseModule)  # rank 4 > 3 at the second commit
    assert isinstance(c.modules["head"], DenseModule)  # rank 4 > 3 at the fourth
    avg = uniform_average("stack", [a for a, _ in steps], compaction=Compaction(3))
    plain = uniform_average("stack", [a for a, _ in steps])
    assert composite_digest(avg) != composite_digest(plain)
    assert isinstance(avg.modules["enc.v"], DenseModule)


def test_compaction_is_for_stack_only() -> None:
    adapter = random_adapter(1, SHAPES, RANKS)
    for mode in ("fusion", "mixture"):
        with pytest.raises(ModeError, match="stack only"):
            apply(empty(mode), adapter, (1.0, 1.0), compaction=CROSSOVER)
    with pytest.raises(ModeError, match="dense"):
        Composite("fusion", modules={"w": DenseModule(torch.zeros(2, 2))})


# --- the digest -----------------------------------------------------------------------------


def test_a_dense_module_hashes_apart_from_factors_of_the_same_product() -> None:
    b, a = _factors(4, 6, 2, 5)
    factored = Composite("stack", modules={"w": LoraModule(A=a, B=b)})
    dense = Composite("stack", modules={"w": DenseModule(exact_product(b, a))})
    same = Composite("stack", modules={"w": DenseModule(exact_product(b.clone(), a.clone()))})
    assert composite_digest(dense) != composite_digest(factored)
    assert composite_digest(dense) == composite_digest(same)
    # The shape is hashed too: a W of other shape with the same bytes is another composite.
    w = exact_product(b, a)
    other = Composite("stack", modules={"w": DenseModule(w.reshape(5, 6).contiguous())})
    assert composite_digest(other) != composite_digest(dense)


# --- the spec -------------------------------------------------------------------------------

OLD_STACK = (
    '{"limits": {"max_blob_bytes": 536870912, "max_norm": 10000.0, "max_rank": 256, '
    '"max_tensor_elements": 67108864}, "mode": "stack", "search": {"bound": 1.5, '
    '"budget": 40, "init": 0.5, "keep_max": 1.0, "keep_min": 0.5, "l1": 0.05, '
    '"objective": "logprob", "seed": 0}}'
)


def test_a_spec_without_compaction_keeps_its_exact_bytes() -> None:
    assert json.dumps(MergeSpec(mode="stack").to_dict(), sort_keys=True) == OLD_STACK
    for mode in ("fusion", "stack", "mixture"):
        data = MergeSpec(mode=mode).to_dict()
        assert sorted(data) == ["limits", "mode", "search"]
        assert MergeSpec.from_dict(data).compaction == "off"


@pytest.mark.parametrize("rank", [0, 48])
def test_compaction_round_trips_and_is_written_only_when_set(rank: int) -> None:
    spec = MergeSpec(mode="stack", compaction="auto", compact_rank=rank)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["compaction"] == "auto"
    assert ("compact_rank" in data) == (rank != 0)
    assert MergeSpec.from_dict(data) == spec
    assert MergeSpec.from_dict(data).to_dict() == spec.to_dict()


@pytest.mark.parametrize(
    "extra",
    [
        {"compaction": "off"},  # the default is written by leaving it out
        {"compaction": "auto", "compact_rank": 0},
        {"compaction": "always"},
        {"compaction": 1},
        {"compaction": "auto", "compact_rank": -1},
        {"compaction": "auto", "compact_rank": 4.0},
        {"compaction": "auto", "compact_rank": True},
        {"compact_rank": 8},  # a rank without compaction
    ],
)
def test_from_dict_refuses_compaction_settings_it_never_writes(extra: dict[str, object]) -> None:
    with pytest.raises(SpecError):
        MergeSpec.from_dict(MergeSpec(mode="stack").to_dict() | extra)


@pytest.mark.parametrize("mode", ["fusion", "mixture"])
def test_only_stack_networks_compact(mode: str) -> None:
    with pytest.raises(SpecError, match="stack only"):
        MergeSpec(mode=mode, compaction="auto")
    with pytest.raises(SpecError):
        MergeSpec.from_dict(MergeSpec(mode=mode).to_dict() | {"compaction": "auto"})


def test_the_authors_search_runs_against_a_compacted_head() -> None:
    from test_merge_search import DATA, ENC, pooled_loss, probs_of

    from merge.pipeline.search import search_coeffs
    from merge.spec import SearchSettings

    shapes = {"fc1": (10, 6), "fc2": (8, 10)}
    policy = Compaction(2)
    head = apply(
        empty("stack"),
        random_adapter(11, shapes, {"fc1": 4, "fc2": 4}),
        (1.0, 1.0),
        compaction=policy,
    )
    assert all(isinstance(m, DenseModule) for m in head.modules.values())
    new = random_adapter(12, shapes, {"fc1": 3})
    settings = SearchSettings(budget=8, seed=3)
    result = search_coeffs(ENC, head, new, DATA, settings)
    assert result == search_coeffs(ENC, head, new, DATA, settings)
    # Scored on exactly the composite every node applies (a dense head stays dense).
    merged = apply(head, new, result.coeffs, compaction=policy)
    assert result.objective["loss_after"] == pooled_loss(probs_of(merged), "logprob")


def test_a_unit_keep_coefficient_leaves_the_dense_bytes_as_they_were() -> None:
    """w1 = 1.0 skips the multiplication: x·1 = x bitwise, so the skip changes no byte."""
    policy = Compaction(1)
    c = apply(empty("stack"), random_adapter(1, SHAPES, RANKS), (1.0, 1.0), compaction=policy)
    dense = c.modules["enc.q"]
    assert isinstance(dense, DenseModule)
    only_head = random_adapter(2, SHAPES, {"head": 1})
    after = apply(c, only_head, (1.0, 0.5), compaction=policy).modules["enc.q"]
    assert isinstance(after, DenseModule)
    assert raw(after.W) == raw(torch.mul(dense.W, torch.tensor(1.0, dtype=torch.float32)))


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 16])
@pytest.mark.parametrize("keep", [1.0, 0.625, 0.0])
def test_the_blocked_update_is_the_three_operations_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch, block: int, keep: float
) -> None:
    """accumulate computes add(mul(W, t), exact_product(B, A)) in row blocks that stay in
    cache; the block size (and skipping a multiplication by exactly 1.0) changes no byte."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(13, 9, generator=g)
    w[0, 0] = -0.0
    b, a = torch.randn(13, 3, generator=g), torch.randn(3, 9, generator=g)
    b[2] = 0.0
    t = torch.tensor(keep, dtype=torch.float32)
    want = torch.add(torch.mul(w, t), exact_product(b, a))
    monkeypatch.setattr(dense, "_BLOCK_ELEMENTS", block)
    assert raw(accumulate(w, t, b, a)) == raw(want)
    assert raw(accumulate(None, None, b, a)) == raw(exact_product(b, a))


@pytest.mark.parametrize("keep", [1.0, 0.5, -1.0, -0.0])
def test_every_exact_zero_of_an_update_is_positive(keep: float) -> None:
    """Signed zeros: W·t is -0.0 here (a -0.0 in W, a negative or -0.0 t, a tiny negative
    product rounding to zero) where the product is an exact zero of either sign (a zero
    row of B times a negative A, K = 1), and where the product is a tiny negative value
    whose float32 cast is -0.0: each such sum is +0.0, as add(mul(W, t), exact_product)."""
    w = torch.tensor([[-0.0, 0.0, -1e-45, 2.0], [-0.0, -1e-45, 1e-45, -0.0]])
    b = torch.tensor([[0.0], [-0.0]])
    a = torch.tensor([[-3.0, 2.0, -1.0, 0.0]])
    t = torch.tensor(keep, dtype=torch.float32)
    want = torch.add(torch.mul(w, t), exact_product(b, a))
    got = accumulate(w, t, b, a)
    assert raw(got) == raw(want)
    zeros = got == 0
    assert bool(zeros.any())
    assert not bool(torch.signbit(got[zeros]).any())
    # A product that underflows float32: the cast gives -0.0, the pass after it +0.0.
    tiny_b, tiny_a = torch.tensor([[-1e-30]]), torch.tensor([[1e-30]])
    for old in (torch.tensor([[-0.0]]), None):
        got = accumulate(old, t if old is not None else None, tiny_b, tiny_a)
        assert raw(got) == raw(torch.tensor([[0.0]]))
