"""Continual plugins: trained on top of a composite's ΔW (held fixed) with a replay of the
distilled sets merged into it. The base is never modified; the saved adapter is the new LoRA
alone, and stacking it onto the composite at (1, 1) is the model that was trained."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import CONTINUAL_CONFIG, tiny_text_backend, toy_records

from merge.fold import Composite, apply, delta_weights, empty
from merge.lora import LoraAdapter, load_adapter
from merge.pipeline.backends.text import TextBackend
from merge.pipeline.datasets import Examples, stratified_split
from merge.pipeline.distill import DistillConfig, Distilled, distill, over_whole_tasks
from merge.pipeline.errors import DataFormatError, DeltaError
from merge.pipeline.evaluate import evaluate
from merge.pipeline.train import (
    Continual,
    TrainConfig,
    TrainResult,
    read_plugin_meta,
    train_plugin,
)
from merge.spec import Limits

CONFIG = CONTINUAL_CONFIG
PARENT = "ab" * 32


@pytest.fixture(scope="module")
def backend() -> TextBackend:
    return tiny_text_backend()


def _relabelled(records: Examples) -> Examples:
    """The toy data under other class names: a second task with its own classes."""
    return Examples(records.items, records.labels, ("break", "germ", "growth"))


@pytest.fixture(scope="module")
def first(
    backend: TextBackend, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LoraAdapter, Distilled]:
    """Task one: an independent plugin and its distilled set."""
    out = tmp_path_factory.mktemp("first") / "plugin"
    train_plugin(backend, toy_records(), task="one", out=out, config=CONFIG)
    d = distill(backend, toy_records(), task="one", config=DistillConfig.quick(ipc=2)).distilled
    return load_adapter(out, base=backend.fingerprint, limits=Limits()), d


@pytest.fixture(scope="module")
def composite(first: tuple[LoraAdapter, Distilled]) -> Composite:
    return apply(empty("stack"), first[0], (1.0, 1.0))


@pytest.fixture(scope="module")
def continual(
    backend: TextBackend,
    composite: Composite,
    first: tuple[LoraAdapter, Distilled],
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainResult:
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}
    out = tmp_path_factory.mktemp("second") / "plugin"
    prior = Continual.of(composite, [first[1]], parent=PARENT)
    result = train_plugin(
        backend, _relabelled(toy_records()), task="two", out=out, config=CONFIG, continual=prior
    )
    after = backend.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the shared base changed"
    return result


def test_the_plugin_records_how_it_was_trained(continual: TrainResult) -> None:
    meta = read_plugin_meta(continual.out)
    # onto a stack composite, by default, each LoRA started on its module's ΔW
    want = {"method": "continual", "replay": 6, "parent": PARENT, "init": "composite-svd"}
    assert meta["training"] == want
    assert dict(continual.training) == meta["training"]
    assert set(meta["validation"]) == {"base", "plugin", "composite"}
    assert meta["config"]["replay_weight"] == 1.0
    assert continual.composite is not None
    assert continual.replay_accuracy is not None


def test_stacking_it_at_one_one_is_the_model_that_was_trained(
    backend: TextBackend, composite: Composite, continual: TrainResult
) -> None:
    """The saved adapter is the new LoRA alone; composite + plugin at (1, 1) in stack mode
    scores exactly what training measured (sequential fine-tuning with rehearsal)."""
    plugin = load_adapter(continual.out, base=backend.fingerprint, limits=Limits())
    assert sorted(plugin.modules) == sorted(composite.modules)
    assert all(m.rank == CONFIG.rank for m in plugin.modules.values())
    _, val = stratified_split(_relabelled(toy_records()), CONFIG.val_fraction, CONFIG.seed)
    stacked = evaluate(backend, apply(composite, plugin, (1.0, 1.0)), val)
    assert stacked.accuracy == continual.plugin.accuracy
    assert stacked.auc == pytest.approx(continual.plugin.auc, abs=1e-6)
    start = evaluate(backend, composite, val)
    assert continual.composite is not None
    assert start.accuracy == continual.composite.accuracy


def test_replay_keeps_the_merged_task(
    backend: TextBackend,
    composite: Composite,
    first: tuple[LoraAdapter, Distilled],
    tmp_path: Path,
) -> None:
    """Without the replay term (weight 0) the replayed set fares worse than with it. Both
    start at PEFT's init: warm-started, this toy task's 6 replayed examples end at the same
    count right (4 of 6) with or without the term, too coarse to show it."""
    prior = Continual.of(composite, [first[1]], parent=PARENT)
    cold = replace(CONFIG, warm_start=False)
    rehearsed, unrehearsed = (
        train_plugin(
            backend,
            _relabelled(toy_records()),
            task="two",
            out=tmp_path / f"p{weight:g}",
            config=replace(cold, replay_weight=weight),
            continual=prior,
        )
        for weight in (1.0, 0.0)
    )
    assert rehearsed.replay_accuracy is not None
    assert unrehearsed.replay_accuracy is not None
    assert rehearsed.replay_accuracy[0] == unrehearsed.replay_accuracy[0]  # same start
    assert rehearsed.replay_accuracy[1] > unrehearsed.replay_accuracy[1]
    assert rehearsed.replay_accuracy[1] >= rehearsed.replay_accuracy[0]


def test_an_empty_prior_trains_exactly_like_independent(
    backend: TextBackend, tmp_path: Path
) -> None:
    """No ΔW and no replay: byte-identical adapter to the independent path (same seed)."""
    records = toy_records()
    alone = train_plugin(backend, records, task="t", out=tmp_path / "a", config=CONFIG)
    prior = Continual(parent=PARENT)
    on_empty = train_plugin(
        backend, records, task="t", out=tmp_path / "b", config=CONFIG, continual=prior
    )
    name = "adapter_model.safetensors"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert alone.losses == on_empty.losses
    assert read_plugin_meta(tmp_path / "a")["training"] == {
        "method": "independent",
        "replay": 0,
        "parent": None,
    }
    assert read_plugin_meta(tmp_path / "b")["training"]["method"] == "continual"


def test_of_a_mixture_gives_no_delta(
    composite: Composite, first: tuple[LoraAdapter, Distilled]
) -> None:
    mixture = apply(empty("mixture"), first[0], (1.0, 1.0))
    prior = Continual.of(mixture, [first[1]], parent=PARENT)
    assert not prior.delta
    assert prior.n_replay == 6
    stacked = Continual.of(composite, [], parent=PARENT)
    want = delta_weights(composite.modules)
    assert sorted(stacked.delta) == sorted(want)
    assert all(torch.equal(stacked.delta[k], want[k]) for k in want)
    assert not Continual.of(empty("fusion"), [], parent=PARENT).delta


def test_joint_features_are_the_separate_ones(
    backend: TextBackend, first: tuple[LoraAdapter, Distilled]
) -> None:
    """A step with replay: ids of different lengths and synthetic embeddings give what each
    gives alone, in one padded pass (short texts) or in two (long ones)."""
    embeds = first[1].inputs[:3]
    for texts in (["flu", "broken rib and fever"], ["flu", "a long history of " * 6]):
        ids = backend.prepare(texts)
        got_ids, got_embeds = backend.joint_features(backend.model, ids, embeds)
        torch.testing.assert_close(got_ids, backend.features(backend.model, ids))
        torch.testing.assert_close(got_embeds, backend.features(backend.model, embeds))


def test_a_replay_set_of_another_base_or_a_bad_delta_is_refused(
    backend: TextBackend, first: tuple[LoraAdapter, Distilled], tmp_path: Path
) -> None:
    d = first[1]
    other = Distilled(d.inputs, d.labels, d.classes, d.task, d.kind, "cd" * 32)
    with pytest.raises(DataFormatError, match="replay set"):
        train_plugin(
            backend,
            toy_records(),
            task="t",
            out=tmp_path / "x",
            config=CONFIG,
            continual=Continual(PARENT, {}, (other,)),
        )
    with pytest.raises(DeltaError):
        train_plugin(
            backend,
            toy_records(),
            task="t",
            out=tmp_path / "y",
            config=CONFIG,
            continual=Continual(PARENT, {"nope": torch.zeros(2, 2)}),
        )
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "y").exists()


def test_a_clip_plugin_trains_on_a_composite_with_pixel_replay(tmp_path: Path) -> None:
    """Pixels: the own and the replayed batch share one forward pass; stacking at (1, 1)
    is again the trained model."""
    from pipeline_fixtures import save_tiny_clip, write_toy_images

    from merge.pipeline.backends import load_backend
    from merge.pipeline.datasets import read_image_folder

    clip = load_backend("clip", str(save_tiny_clip(tmp_path / "clip")))
    write_toy_images(tmp_path / "images")
    records = read_image_folder(tmp_path / "images")
    config = TrainConfig.for_backend("clip", steps=6, batch_size=4, progress=False)
    train_plugin(clip, records, task="one", out=tmp_path / "one", config=config)
    d = distill(clip, records, task="one", config=DistillConfig.quick(ipc=2)).distilled
    composite = apply(
        empty("stack"),
        load_adapter(tmp_path / "one", base=clip.fingerprint, limits=Limits()),
        (1.0, 1.0),
    )
    prior = Continual.of(composite, [d], parent=PARENT)
    result = train_plugin(
        clip, records, task="two", out=tmp_path / "two", config=config, continual=prior
    )
    want = {"method": "continual", "replay": 4, "parent": PARENT, "init": "composite-svd"}
    assert dict(result.training) == want
    plugin = load_adapter(tmp_path / "two", base=clip.fingerprint, limits=Limits())
    _, val = stratified_split(records, config.val_fraction, config.seed)
    stacked = evaluate(clip, apply(composite, plugin, (1.0, 1.0)), val)
    assert stacked.accuracy == result.plugin.accuracy


def _held(records: Examples, keep: tuple[str, ...]) -> Examples:
    """One institution's view of a shared task under label skew: only the classes it holds."""
    idx = [i for i, y in enumerate(records.labels) if records.classes[y] in keep]
    labels = tuple(keep.index(records.classes[records.labels[i]]) for i in idx)
    return Examples(tuple(records.items[i] for i in idx), labels, keep)


def test_distilled_sets_are_scored_over_their_tasks_whole_class_list(
    backend: TextBackend,
) -> None:
    classes = toy_records().classes
    config = DistillConfig.quick(ipc=1)
    a = distill(backend, _held(toy_records(), classes[:2]), task="t", config=config).distilled
    b = distill(backend, _held(toy_records(), classes[1:]), task="t", config=config).distilled
    c = distill(backend, _relabelled(toy_records()), task="u", config=config).distilled
    wa, wb, wc = over_whole_tasks([a, b, c])
    assert wa.classes == wb.classes == classes  # first appearance: a's, then b's new one
    assert [wa.classes[y] for y in wa.labels] == [a.classes[y] for y in a.labels]
    assert [wb.classes[y] for y in wb.labels] == [b.classes[y] for y in b.labels]
    assert wc is c  # a task of its own is untouched


def test_warm_start_puts_each_lora_on_its_deltas_top_directions(
    backend: TextBackend, composite: Composite
) -> None:
    """``warm_start``: A's rows are ΔW's top right singular vectors (at PEFT's row norm) and
    B stays zero, so the model still computes exactly the composite."""
    from merge.pipeline import train as recipe

    delta = delta_weights(composite.modules)
    config = replace(CONFIG, warm_start=True)
    peft_model = recipe._wrap(backend, config, recipe._start_model(backend, delta))
    norms = {
        n: m.lora_A["default"].weight.norm(dim=1).mean()
        for n, m in recipe._inner(peft_model).named_modules()
        if n in delta
    }
    recipe._warm_start(peft_model, delta)
    modules = dict(recipe._inner(peft_model).named_modules())
    assert norms
    assert set(norms) == set(delta)
    for name, d in delta.items():
        a = modules[name].lora_A["default"].weight
        b = modules[name].lora_B["default"].weight
        _, _, vh = torch.linalg.svd(d.double(), full_matrices=False)
        want = (vh[: a.shape[0]] * norms[name].double()).float()
        assert torch.equal(a, want)
        assert not b.any()


def test_warm_start_is_on_for_a_stack_composite_with_a_delta_only(composite: Composite) -> None:
    """The default (None) follows the measurement: on for stack and fusion (a mixture has
    no ΔW); an explicit setting wins where there is a ΔW, and an empty ΔW has nothing to
    start on."""
    from merge.pipeline import train as recipe

    delta = delta_weights(composite.modules)
    stack, fusion = Continual(PARENT, delta, mode="stack"), Continual(PARENT, delta, mode="fusion")
    mixture = Continual(PARENT, {}, mode="mixture")
    assert recipe._warm(stack, CONFIG)
    assert recipe._warm(fusion, CONFIG)
    assert not recipe._warm(fusion, replace(CONFIG, warm_start=False))
    assert not recipe._warm(stack, replace(CONFIG, warm_start=False))
    assert not recipe._warm(mixture, replace(CONFIG, warm_start=True))
    assert not recipe._warm(None, CONFIG)


def test_a_warm_fusion_plugin_starts_as_the_composites_factors(
    backend: TextBackend, first: tuple[LoraAdapter, Distilled], tmp_path: Path
) -> None:
    """Onto a fusion composite a warm start trains *from* its factors on the bare base (the
    fold folds factors, not ΔW): at step 0 each LoRA is the composite's module, B unscaled;
    trained, the record says so and folding at (0, 1) is the model that was trained."""
    from merge.pipeline import train as recipe

    fused = apply(empty("fusion"), first[0], (1.0, 1.0))
    prior = Continual.of(fused, [first[1]], parent=PARENT)
    assert set(prior.factors) == set(fused.modules)
    peft_model = recipe._wrap(backend, recipe._ranked(CONFIG, prior.factors))
    recipe._start_on_factors(peft_model, prior.factors)
    for name, module in recipe._inner(peft_model).named_modules():
        if name in prior.factors:
            f = prior.factors[name]
            assert torch.equal(module.lora_A["default"].weight, f.A)
            scaled = module.lora_B["default"].weight * module.scaling["default"]
            assert torch.allclose(scaled, f.B, rtol=1e-6, atol=0.0)

    out = tmp_path / "plugin"
    config = replace(CONFIG, warm_start=True)
    result = train_plugin(
        backend, _relabelled(toy_records()), task="two", out=out, config=config, continual=prior
    )
    assert result.training["init"] == "composite-factors"
    assert read_plugin_meta(out)["training"]["init"] == "composite-factors"
    plugin = load_adapter(out, base=backend.fingerprint, limits=Limits())
    assert set(plugin.modules) >= set(fused.modules)  # no module of the composite dropped
    _, val = stratified_split(_relabelled(toy_records()), CONFIG.val_fraction, CONFIG.seed)
    assert evaluate(backend, apply(fused, plugin, (0.0, 1.0)), val).accuracy == (
        result.plugin.accuracy
    )
