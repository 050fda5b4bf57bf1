"""Per-module coefficients (issue 12): the grouping is a pure function of the path, and the
fold applies a group's pair with exactly the operations of the scalar pair.

Equality is ``torch.equal`` or digest equality, never a tolerance.
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
from merge_fixtures import make_peft_adapter, random_adapter

from merge import errors
from merge.digest import composite_digest
from merge.fold import apply, empty, fold, single_task
from merge.groups import GROUPINGS, ModuleCoeffs, group_names, group_of
from merge.offline import merge_paths
from merge.spec import MergeSpec, SearchSettings

SHAPES = {
    "encoder.layer.0.attention.query": (6, 5),
    "encoder.layer.0.attention.value": (6, 5),
    "encoder.layer.1.attention.query": (6, 5),
    "encoder.layer.1.attention.value": (6, 5),
    "head": (3, 6),
}
ALL = dict.fromkeys(SHAPES, 2)
L1 = random_adapter(1, SHAPES, ALL)
L2 = random_adapter(2, SHAPES, {k: 3 for k in SHAPES if "value" not in k})
coeff = st.floats(-1.5, 1.5, allow_nan=False)


@pytest.mark.parametrize(
    ("grouping", "path", "group"),
    [
        ("none", "encoder.layer.3.attention.self.query", None),
        ("layer", "encoder.layer.3.attention.self.query", "encoder.layer.3"),
        ("layer", "encoder.layer.11.output.dense", "encoder.layer.11"),
        (
            "layer",
            "vision_model.encoder.layers.7.self_attn.q_proj",
            "vision_model.encoder.layers.7",
        ),
        ("layer", "text_model.encoder.layers.7.self_attn.q_proj", "text_model.encoder.layers.7"),
        ("layer", "blocks.2.experts.5.fc", "blocks.2"),  # the first index: the block
        ("layer", "head", None),
        ("layer", "pooler.dense", None),
        ("layer", "0.dense", None),  # a leading index names no layer
        ("target", "encoder.layer.3.attention.self.query", "query"),
        ("target", "head", "head"),
    ],
)
def test_group_of_is_a_function_of_the_path(grouping: str, path: str, group: str | None) -> None:
    assert group_of(grouping, path) == group


def test_group_names_are_the_distinct_groups_sorted() -> None:
    assert group_names("layer", SHAPES) == ("encoder.layer.0", "encoder.layer.1")
    assert group_names("target", SHAPES) == ("head", "query", "value")
    assert group_names("none", SHAPES) == ()
    with pytest.raises(errors.SpecError):
        group_of("block", "encoder.layer.0.q")
    assert GROUPINGS == ("none", "layer", "target")


@given(coeff, coeff)
@settings(max_examples=30, deadline=None)
def test_every_group_at_the_scalar_pair_is_the_scalar_fold_bit_for_bit(
    w1: float, w2: float
) -> None:
    for mode in ("fusion", "stack"):
        for grouping in ("layer", "target"):
            pairs = dict.fromkeys(group_names(grouping, SHAPES), (w1, w2))
            for head in (empty(mode), single_task(mode, L1)):
                plain = apply(head, L2, (w1, w2))
                grouped = apply(head, L2, (w1, w2), ModuleCoeffs(grouping, pairs))
                assert composite_digest(grouped) == composite_digest(plain)
                for name, m in plain.modules.items():
                    assert torch.equal(grouped.modules[name].A, m.A)
                    assert torch.equal(grouped.modules[name].B, m.B)
    # No pairs at all, and a grouping of "none", are the scalar fold too.
    head = single_task("stack", L1)
    plain = composite_digest(apply(head, L2, (w1, w2)))
    assert composite_digest(apply(head, L2, (w1, w2), ModuleCoeffs("layer", {}))) == plain
    none = ModuleCoeffs("none", {"encoder.layer.0": (0.5, 0.5)})
    assert composite_digest(apply(head, L2, (w1, w2), none)) == plain


@given(coeff, coeff, coeff, coeff)
@settings(max_examples=30, deadline=None)
def test_a_groups_pair_changes_exactly_the_modules_of_that_group(
    w1: float, w2: float, g1: float, g2: float
) -> None:
    for mode in ("fusion", "stack"):
        head = single_task(mode, L1)
        grouped = apply(head, L2, (w1, w2), ModuleCoeffs("layer", {"encoder.layer.1": (g1, g2)}))
        scalar, group = apply(head, L2, (w1, w2)), apply(head, L2, (g1, g2))
        for name, m in grouped.modules.items():
            want = group if name.startswith("encoder.layer.1.") else scalar
            assert torch.equal(m.A, want.modules[name].A), name
            assert torch.equal(m.B, want.modules[name].B), name


def test_the_stack_fold_scales_each_groups_b_by_its_own_pair() -> None:
    pairs = {"query": (0.75, -0.5), "head": (0.5, 1.25)}  # "value" takes the scalar pair
    c = apply(single_task("stack", L1), L2, (1.0, 0.25), ModuleCoeffs("target", pairs))
    for name, m in c.modules.items():
        w1, w2 = pairs.get(name.rsplit(".", 1)[-1], (1.0, 0.25))
        old, new = L1.modules[name], L2.modules.get(name)
        assert torch.equal(m.B[:, : old.rank], old.B * np.float32(w1))
        if new is not None:
            assert torch.equal(m.B[:, old.rank :], new.B * np.float32(w2))


def test_signed_zeros_of_two_groups_stay_apart() -> None:
    # Pairs that compare equal (0.0 == -0.0) are still different bits on every node.
    pairs = {"encoder.layer.0": (0.0, 1.0), "encoder.layer.1": (-0.0, 1.0)}
    c = apply(single_task("fusion", L1), L2, (1.0, 1.0), ModuleCoeffs("layer", pairs))
    pos = apply(single_task("fusion", L1), L2, (0.0, 1.0))
    neg = apply(single_task("fusion", L1), L2, (-0.0, 1.0))
    value = "encoder.layer.{}.attention.value"  # in L1 only: A' = w1 * A
    assert pos.modules[value.format(0)].A.numpy().tobytes() != (
        neg.modules[value.format(0)].A.numpy().tobytes()
    )
    for k, want in ((0, pos), (1, neg)):
        got = c.modules[value.format(k)].A.numpy().tobytes()
        assert got == want.modules[value.format(k)].A.numpy().tobytes()


def test_a_mixture_refuses_per_module_coefficients() -> None:
    with pytest.raises(errors.ModeError, match="per-module"):
        apply(single_task("mixture", L1), L2, (1.0, 1.0), ModuleCoeffs("layer", {}))
    assert apply(single_task("mixture", L1), L2, (0.5, 0.5), None).weights == (0.5, 0.5)


@pytest.mark.parametrize("bad", [(float("nan"), 1.0), (1.0, float("inf")), (True, 1.0), (1.0,)])
def test_bad_group_pairs_are_refused(bad: tuple[object, ...]) -> None:
    with pytest.raises(errors.CoefficientError):
        ModuleCoeffs("layer", {"encoder.layer.0": bad})  # type: ignore[dict-item]
    with pytest.raises(errors.SpecError):
        ModuleCoeffs("blocks", {})


def test_fold_takes_steps_with_and_without_group_pairs() -> None:
    groups = ModuleCoeffs("layer", {"encoder.layer.0": (0.5, 0.75)})
    one = fold("stack", [(L1, (1.0, 1.0)), (L2, (0.9, 0.5), groups)])
    two = apply(apply(empty("stack"), L1, (1.0, 1.0)), L2, (0.9, 0.5), groups)
    assert composite_digest(one) == composite_digest(two)
    assert composite_digest(fold("stack", [(L1, (1.0, 1.0), None), (L2, (0.9, 0.5))])) == (
        composite_digest(apply(single_task("stack", L1), L2, (0.9, 0.5)))
    )


def test_merge_paths_applies_group_pairs_under_the_specs_grouping(tmp_path: Path) -> None:
    a, b = (make_peft_adapter(tmp_path / n, s, r=2) for n, s in (("a", 1), ("b", 2)))
    spec = MergeSpec(mode="stack", search=SearchSettings(groups="target"))
    pairs = {"q": (0.5, 0.25)}
    grouped = merge_paths(spec, [(a, (1.0, 1.0)), (b, (0.75, 0.5), pairs)])
    plain = merge_paths(spec, [(a, (1.0, 1.0)), (b, (0.75, 0.5))])
    assert composite_digest(grouped) != composite_digest(plain)
    assert torch.equal(grouped.modules["enc.v"].B, plain.modules["enc.v"].B)  # not in "q"
    scalar_q = merge_paths(spec, [(a, (1.0, 1.0)), (b, (0.5, 0.25))])
    assert torch.equal(grouped.modules["enc.q"].B, scalar_q.modules["enc.q"].B)


_SUBPROCESS_FOLD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from merge.digest import composite_digest
from merge.fold import fold
from merge.groups import ModuleCoeffs
from merge.lora import LoraAdapter, LoraModule
def adapter(seed, rank):
    g = torch.Generator().manual_seed(seed)
    mods = {f"enc.layer.{i}.{t}": LoraModule(A=torch.randn(rank, 512, generator=g),
            B=torch.randn(384, rank, generator=g)) for i in range(3) for t in ("q", "v")}
    return LoraAdapter("base", mods)
layer = ModuleCoeffs("layer", {"enc.layer.0": (0.7, -0.3), "enc.layer.2": (1.0 / 3.0, 0.9)})
target = ModuleCoeffs("target", {"v": (0.123456789, 1.1)})
for mode in ("fusion", "stack"):
    print(composite_digest(fold(mode, [(adapter(1, 64), (1.0, 0.7)),
          (adapter(2, 48), (0.3, -1.1), layer), (adapter(3, 64), (0.9, 0.5), target)])))
"""


def test_grouped_fold_digest_is_identical_across_processes_and_thread_counts() -> None:
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
    assert outs[0] == outs[1]
    assert len(set(outs[0])) == 2
