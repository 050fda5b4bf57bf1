"""The fold and the digest: exact semantics, purity and bit-exact determinism.

Equality here is ``torch.equal`` or digest equality, never a tolerance, except where a dense
ΔW (a matmul) is compared with its definition.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from merge_fixtures import random_adapter

from merge import errors
from merge.digest import adapter_digest, composite_digest
from merge.fold import (
    Composite,
    apply,
    delta_weights,
    empty,
    fold,
    single_task,
    uniform_average,
)
from merge.lora import LoraAdapter, LoraModule

SHAPES = {"enc.q": (6, 5), "enc.v": (6, 5), "head": (3, 6)}
L1 = random_adapter(1, SHAPES, {"enc.q": 2, "enc.v": 2})
L2 = random_adapter(2, SHAPES, {"enc.q": 3, "head": 1})
L3 = random_adapter(3, SHAPES, {"enc.q": 2, "enc.v": 4, "head": 2})
coeff = st.floats(-1.5, 1.5, allow_nan=False)


def np_axpby(x: torch.Tensor, y: torch.Tensor, w1: float, w2: float) -> torch.Tensor:
    """Reference in numpy float32: w1·x and w2·y rounded separately, then added."""
    out = x.numpy() * np.float32(w1) + y.numpy() * np.float32(w2)
    return torch.from_numpy(out)


def pad(t: torch.Tensor, rows: int = 0, cols: int = 0) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, cols, 0, rows))


@given(coeff, coeff)
@settings(max_examples=40, deadline=None)
def test_fusion_is_elementwise_mul_then_add_with_zero_padded_ranks(w1: float, w2: float) -> None:
    c = apply(single_task("fusion", L1), L2, (w1, w2))
    q1, q2 = L1.modules["enc.q"], L2.modules["enc.q"]
    assert torch.equal(c.modules["enc.q"].A, np_axpby(pad(q1.A, rows=1), q2.A, w1, w2))
    assert torch.equal(c.modules["enc.q"].B, np_axpby(pad(q1.B, cols=1), q2.B, w1, w2))
    # A module on one side only is that side scaled (the other side counts as zeros).
    assert torch.equal(c.modules["enc.v"].A, L1.modules["enc.v"].A * np.float32(w1))
    assert torch.equal(c.modules["head"].B, L2.modules["head"].B * np.float32(w2))


@given(coeff, coeff)
@settings(max_examples=40, deadline=None)
def test_stack_concatenates_scaled_factors_and_is_the_exact_weighted_sum(
    w1: float, w2: float
) -> None:
    c = apply(single_task("stack", L1), L2, (w1, w2))
    q = c.modules["enc.q"]
    assert q.rank == 5
    assert torch.equal(q.A, torch.cat([L1.modules["enc.q"].A, L2.modules["enc.q"].A]))
    assert torch.equal(q.B[:, :2], L1.modules["enc.q"].B * np.float32(w1))
    assert torch.equal(q.B[:, 2:], L2.modules["enc.q"].B * np.float32(w2))
    exact = {
        n: w1 * delta_weights(L1.modules).get(n, torch.zeros(SHAPES[n]))
        + w2 * delta_weights(L2.modules).get(n, torch.zeros(SHAPES[n]))
        for n in SHAPES
    }
    for name, dw in delta_weights(c.modules).items():
        torch.testing.assert_close(dw, exact[name], rtol=1e-5, atol=1e-5)


def test_mixture_keeps_members_and_updates_weights_in_python_floats() -> None:
    c = fold("mixture", [(L1, (0.3, 0.7)), (L2, (0.1, 0.2)), (L3, (1.0 / 3.0, 0.9))])
    assert c.members == (L1, L2, L3)
    assert c.weights == ((0.7 * 0.1) * (1.0 / 3.0), 0.2 * (1.0 / 3.0), 0.9)


def test_first_commit_is_w2_times_the_adapter() -> None:
    for mode in ("fusion", "stack"):
        c = apply(empty(mode), L3, (0.25, 0.5))
        for name, m in L3.modules.items():
            assert torch.equal(c.modules[name].B, m.B * np.float32(0.5))
            a = m.A * np.float32(0.5) if mode == "fusion" else m.A
            assert torch.equal(c.modules[name].A, a)
    assert apply(empty("mixture"), L3, (0.25, 0.5)).weights == (0.5,)


def test_baselines() -> None:
    avg = uniform_average("stack", [L1, L2, L3])
    exact = sum(delta_weights(a.modules)["enc.q"] for a in (L1, L2, L3)) / 3
    torch.testing.assert_close(delta_weights(avg.modules)["enc.q"], exact)
    assert uniform_average("mixture", [L1, L2]).weights == (0.5, 0.5)
    assert composite_digest(single_task("fusion", L1)) == composite_digest(
        apply(empty("fusion"), L1, (1.0, 1.0))
    )
    with pytest.raises(errors.ModeError):
        uniform_average("stack", [])


def test_apply_is_pure() -> None:
    before = [adapter_digest(a) for a in (L1, L2)]
    c = single_task("fusion", L1)
    c_digest = composite_digest(c)
    apply(c, L2, (0.5, 0.5))
    assert [adapter_digest(a) for a in (L1, L2)] == before
    assert composite_digest(c) == c_digest


@pytest.mark.parametrize(
    "bad",
    [(float("nan"), 1.0), (1.0, float("inf")), (True, 1.0), (1.0,), (1.0, 2.0, 3.0), ("1", 1.0)],
)
def test_bad_coefficients_are_refused(bad: tuple[object, ...]) -> None:
    for mode in ("fusion", "stack", "mixture"):
        with pytest.raises(errors.CoefficientError):
            apply(single_task(mode, L1), L2, bad)  # type: ignore[arg-type]


def test_shape_mismatch_names_adapter_and_module() -> None:
    wrong = random_adapter(9, {"enc.q": (7, 5)}, {"enc.q": 2})
    with pytest.raises(errors.ShapeError, match="seed9.*enc.q"):
        apply(single_task("stack", L1), wrong, (1.0, 1.0))


def test_composite_invariants() -> None:
    with pytest.raises(errors.ModeError):
        Composite("average")
    with pytest.raises(errors.ModeError):
        Composite("stack", members=(L1,), weights=(1.0,))
    with pytest.raises(errors.ModeError):
        Composite("mixture", members=(L1,), weights=())


@given(st.permutations(["enc.q", "enc.v", "head"]), coeff, coeff)
@settings(max_examples=25, deadline=None)
def test_module_insertion_order_never_changes_the_digest(
    order: list[str], w1: float, w2: float
) -> None:
    permuted = LoraAdapter(L3.base, {n: L3.modules[n] for n in order}, name="other label")
    for mode in ("fusion", "stack", "mixture"):
        one = apply(single_task(mode, L1), L3, (w1, w2))
        two = apply(single_task(mode, L1), permuted, (w1, w2))
        assert composite_digest(one) == composite_digest(two)


def test_digest_sees_every_bit_mode_and_weight() -> None:
    c = apply(single_task("stack", L1), L2, (0.5, 0.5))
    flipped = dict(c.modules)
    b = flipped["head"].B.clone()
    b.view(torch.int32)[0, 0] ^= 1
    flipped["head"] = LoraModule(A=flipped["head"].A, B=b)
    digests = {
        composite_digest(c),
        composite_digest(Composite("stack", modules=flipped)),
        composite_digest(Composite("fusion", modules=c.modules)),
        composite_digest(fold("mixture", [(L1, (1.0, 1.0)), (L2, (0.5, 0.5))])),
        composite_digest(fold("mixture", [(L1, (1.0, 1.0)), (L2, (0.5, np.nextafter(0.5, 1)))])),
        composite_digest(empty("stack")),
        composite_digest(empty("fusion")),
    }
    assert len(digests) == 7


_SUBPROCESS_FOLD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from merge.digest import composite_digest
from merge.fold import fold
from merge.lora import LoraAdapter, LoraModule
def adapter(seed, rank):
    g = torch.Generator().manual_seed(seed)
    mods = {f"layer.{i}": LoraModule(A=torch.randn(rank, 512, generator=g),
                                     B=torch.randn(384, rank, generator=g)) for i in range(3)}
    return LoraAdapter("base", mods)
steps = [(adapter(1, 128), (1.0, 0.7)), (adapter(2, 96), (0.3, -1.1)),
         (adapter(3, 128), (1.0 / 3.0, 0.123456789))]
print(torch.get_num_threads(), *(composite_digest(fold(m, steps)) for m in
      ("fusion", "stack", "mixture")))
"""


def test_fold_digest_is_identical_across_processes_and_thread_counts() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    outs = [
        subprocess.run(
            [sys.executable, "-c", _SUBPROCESS_FOLD, str(n)],
            check=True,
            env=env,
            capture_output=True,
            text=True,
            cwd=root,
        ).stdout.split()
        for n in (1, 2)
    ]
    assert [o[0] for o in outs] == ["1", "2"]
    assert outs[0][1:] == outs[1][1:]
    assert len(set(outs[0][1:])) == 3
