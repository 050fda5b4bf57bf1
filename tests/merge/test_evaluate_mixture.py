"""A mixture scored in one batched multi-LoRA pass agrees with the per-member reference (one
pass per member with its dense ΔW), on the text backend and the CLIP image tower, whatever the
members' ranks and module sets, the chunking over members and the weights."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import torch

from merge.fold import Composite
from merge.lora import LoraAdapter, LoraModule
from merge.pipeline.backends.base import DualEncoder
from merge.pipeline.backends.clip import ClipBackend
from merge.pipeline.errors import DeltaError
from merge.pipeline.evaluate import (
    composite_probs,
    mixture_probs,
    mixture_probs_per_member,
    probs_with_delta,
)
from merge.pipeline.multi_lora import MemberStack, member_stacks
from tests.merge.pipeline_fixtures import (
    minilm_tokenizer,
    tiny_clip,
    tiny_text_backend,
    toy_records,
)

ATOL = 1e-5  # BLAS sums in another order; evaluation is never bit-exact


def lora(gen: torch.Generator, out_dim: int, in_dim: int, rank: int) -> LoraModule:
    return LoraModule(
        torch.randn(rank, in_dim, generator=gen) * 0.3, torch.randn(out_dim, rank, generator=gen)
    )


def adapter(backend: DualEncoder, seed: int, rank: int, paths: Sequence[str]) -> LoraAdapter:
    gen = torch.Generator().manual_seed(seed)
    shapes = {n: m.weight.shape for n, m in backend.model.named_modules() if n in paths}
    modules = {p: lora(gen, *shapes[p], rank) for p in paths}
    return LoraAdapter(base=backend.fingerprint, modules=modules, name=f"member-{seed}")


def targets(backend: DualEncoder) -> list[str]:
    """Full paths of the backend's default LoRA targets."""
    leaves = set(backend.lora_targets)
    return sorted(
        n
        for n, m in backend.model.named_modules()
        if isinstance(m, torch.nn.Linear) and (n in leaves or n.rsplit(".", 1)[-1] in leaves)
    )


def mixed_members(backend: DualEncoder) -> list[LoraAdapter]:
    """Ranks 1..4; full, first-half, second-half and every-other module sets."""
    paths = targets(backend)
    half = len(paths) // 2
    sets = [paths, paths[:half], paths[half:], paths[::2], paths]
    return [adapter(backend, seed, 1 + seed % 4, s) for seed, s in enumerate(sets)]


@pytest.fixture(scope="module")
def text() -> DualEncoder:
    return tiny_text_backend()


@pytest.fixture(scope="module")
def clip() -> DualEncoder:
    return ClipBackend(tiny_clip(), minilm_tokenizer(), name="tiny-clip")


WEIGHTS = (0.3, 0.1, 0.25, 0.15, 0.2)


@pytest.mark.parametrize("per_pass", [1, 2, 5, 8])
def test_text_batched_equals_per_member(text: DualEncoder, per_pass: int) -> None:
    data = toy_records(per_class=4)
    members = mixed_members(text)
    want = mixture_probs_per_member(text, members, WEIGHTS, data, data.classes)
    got = mixture_probs(
        text, members, WEIGHTS, data, data.classes, members_per_pass=per_pass, batch_size=5
    )
    assert got.shape == (len(data), len(data.classes))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    base = probs_with_delta(text, data, data.classes, None)
    assert float((want - base).abs().max()) > 100 * ATOL  # the plugins do change the output


def test_clip_image_tower_batched_equals_per_member(clip: DualEncoder) -> None:
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    members = mixed_members(clip)
    assert "visual_projection" in members[0].modules
    classes = ("red lesion", "blue lesion", "no lesion")
    want = mixture_probs_per_member(clip, members, WEIGHTS, pixels, classes)
    assert float((want - probs_with_delta(clip, pixels, classes, None)).abs().max()) > 100 * ATOL
    for per_pass in (2, 5):
        got = mixture_probs(
            clip, members, WEIGHTS, pixels, classes, members_per_pass=per_pass, batch_size=4
        )
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_chunking_over_members_and_inputs_changes_nothing(text: DualEncoder) -> None:
    data = toy_records(per_class=3)
    members = mixed_members(text)
    one = mixture_probs(text, members, WEIGHTS, data, data.classes, members_per_pass=5)
    for per_pass, batch in ((1, 4), (2, 3), (3, 64)):
        got = mixture_probs(
            text, members, WEIGHTS, data, data.classes, members_per_pass=per_pass, batch_size=batch
        )
        torch.testing.assert_close(got, one, atol=ATOL, rtol=0)


def test_weights_are_used_as_given_not_renormalised(text: DualEncoder) -> None:
    data = toy_records(per_class=2)
    members = mixed_members(text)[:3]
    weights = (1.5, 0.0, 0.7)  # sums to 2.2
    got = mixture_probs(text, members, weights, data, data.classes, members_per_pass=2)
    torch.testing.assert_close(got.sum(1), torch.full((len(data),), 2.2), atol=ATOL, rtol=0)
    want = mixture_probs_per_member(text, members, weights, data, data.classes)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # the empty sum is zero, as in the reference
    nothing = mixture_probs(text, [], (), data, data.classes)
    assert torch.equal(nothing, mixture_probs_per_member(text, [], (), data, data.classes))
    assert torch.equal(nothing, torch.zeros(len(data), len(data.classes)))


def test_a_member_without_a_module_gets_no_update_on_its_slice(text: DualEncoder) -> None:
    data = toy_records(per_class=2)
    empty = LoraAdapter(base=text.fingerprint, modules={}, name="empty")
    members = [mixed_members(text)[0], empty]
    got = mixture_probs(text, members, (0.0, 1.0), data, data.classes)
    torch.testing.assert_close(
        got, probs_with_delta(text, data, data.classes, None), atol=ATOL, rtol=0
    )


def test_member_features_are_member_major(text: DualEncoder) -> None:
    ids = text.prepare(list(toy_records(per_class=1).items))
    members = mixed_members(text)[:3]
    feats = MemberStack(text.model, [m.modules for m in members]).features(text, ids)
    assert feats.shape[:2] == (3, len(ids))
    for m, member in enumerate(members):
        alone = MemberStack(text.model, [member.modules]).features(text, ids)[0]
        torch.testing.assert_close(feats[m], alone, atol=ATOL, rtol=0)


def test_a_composite_mixture_is_batched_by_default(text: DualEncoder) -> None:
    data = toy_records(per_class=2)
    members = mixed_members(text)[:2]
    c = Composite("mixture", members=tuple(members), weights=(0.4, 0.6))
    want = composite_probs(text, c, data, data.classes, batched=False)
    torch.testing.assert_close(
        composite_probs(text, c, data, data.classes), want, atol=ATOL, rtol=0
    )


def test_the_base_is_untouched(text: DualEncoder) -> None:
    ids = text.prepare(list(toy_records(per_class=1).items))
    before = text.encode_inputs(ids)
    weights = [p.detach().clone() for p in text.model.parameters()]
    stack = MemberStack(text.model, [m.modules for m in mixed_members(text)])
    stack.features(text, ids)
    assert torch.equal(text.encode_inputs(ids), before)
    # the updates live in this thread's function mode: another thread's pass sees the base
    seen: list[torch.Tensor] = []
    with stack.applied():
        other = threading.Thread(target=lambda: seen.append(text.encode_inputs(ids)))
        other.start()
        other.join()
    assert torch.equal(seen[0], before)
    assert all(torch.equal(a, b) for a, b in zip(weights, text.model.parameters(), strict=True))


def test_members_that_do_not_fit_the_base_are_refused(text: DualEncoder) -> None:
    gen = torch.Generator().manual_seed(0)
    path = targets(text)[0]
    with pytest.raises(DeltaError, match="not a Linear module"):
        MemberStack(text.model, [{"encoder.nowhere": lora(gen, 32, 32, 2)}])
    with pytest.raises(DeltaError, match="composes to"):
        MemberStack(text.model, [{path: lora(gen, 32, 16, 2)}])
    with pytest.raises(ValueError, match="members per pass"):
        member_stacks(text.model, [{}], 0)
