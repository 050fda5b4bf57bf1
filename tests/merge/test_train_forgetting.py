"""What keeps a continual plugin from forgetting (issue 12): Learning without Forgetting on the
member's own inputs when the composite already holds its task (label skew: the member holds
only some of the task's classes; the parent's predictions over the task's whole class list),
the same term on the replayed examples for every task, one head over a task's whole class
list for the local data and its replay, and a local loss adjusted by the member's own class
prior when the composite already holds its task. None touches an independent plugin or an
empty prior (see test_train_continual's byte-identical check), and training stays seeded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import CONTINUAL_CONFIG, tiny_text_backend, toy_records
from torch import nn

from merge.fold import Composite, apply, delta_weights, empty
from merge.lora import load_adapter
from merge.pipeline.backends.base import cosine_logits
from merge.pipeline.backends.text import TextBackend
from merge.pipeline.datasets import Examples, stratified_split
from merge.pipeline.distill import DistillConfig, Distilled, distill
from merge.pipeline.evaluate import model_probs
from merge.pipeline.train import (
    Continual,
    TrainConfig,
    _Anchor,
    _anchor,
    _log_prior,
    _over_whole_task,
    _replay_pools,
    _start_model,
    _with_parent,
    train_plugin,
)
from merge.spec import Limits

CONFIG = CONTINUAL_CONFIG
PARENT = "cd" * 32
TASK = "shared"


def _held(records: Examples, keep: tuple[str, ...]) -> Examples:
    """One institution's view of the shared task: only the classes it holds."""
    idx = [i for i, y in enumerate(records.labels) if records.classes[y] in keep]
    labels = tuple(keep.index(records.classes[records.labels[i]]) for i in idx)
    return Examples(tuple(records.items[i] for i in idx), labels, keep)


@pytest.fixture(scope="module")
def backend() -> TextBackend:
    return tiny_text_backend()


@pytest.fixture(scope="module")
def parent(
    backend: TextBackend, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Composite, Distilled]:
    """The first institution held every class: its plugin is the composite, and its distilled
    set (over the whole class list) is the replay."""
    out = tmp_path_factory.mktemp("first") / "plugin"
    train_plugin(backend, toy_records(), task=TASK, out=out, config=CONFIG)
    d = distill(backend, toy_records(), task=TASK, config=DistillConfig.quick(ipc=2)).distilled
    plugin = load_adapter(out, base=backend.fingerprint, limits=Limits())
    return apply(empty("stack"), plugin, (1.0, 1.0)), d


def _skewed() -> Examples:
    return _held(toy_records(), toy_records().classes[:2])


def _train(
    backend: TextBackend, parent: tuple[Composite, Distilled], out: Path, **overrides: object
) -> Path:
    config = TrainConfig(**{**CONFIG.__dict__, **overrides})
    prior = Continual.of(parent[0], [parent[1]], parent=PARENT)
    train_plugin(backend, _skewed(), task=TASK, out=out, config=config, continual=prior)
    return out


def _kl_to_parent(
    backend: TextBackend, parent: tuple[Composite, Distilled], plugin_dir: Path
) -> float:
    """KL(parent ‖ composite + plugin) over the whole class list, on the training inputs."""
    train_set, _ = stratified_split(_skewed(), CONFIG.val_fraction, CONFIG.seed)
    plugin = load_adapter(plugin_dir, base=backend.fingerprint, limits=Limits())
    classes = toy_records().classes
    p = model_probs(backend, parent[0], train_set, classes)
    q = model_probs(backend, apply(parent[0], plugin, (1.0, 1.0)), train_set, classes)
    return float((p * (p.log() - q.log())).sum(dim=1).mean())


def test_lwf_keeps_the_plugin_near_the_parent(
    backend: TextBackend, parent: tuple[Composite, Distilled], tmp_path: Path
) -> None:
    plain = _train(backend, parent, tmp_path / "plain", lwf_weight=0.0)
    lwf = _train(backend, parent, tmp_path / "lwf", lwf_weight=4.0)
    assert _kl_to_parent(backend, parent, lwf) < _kl_to_parent(backend, parent, plain)


@pytest.fixture(scope="module")
def anchored(
    backend: TextBackend, parent: tuple[Composite, Distilled]
) -> tuple[Continual, nn.Module, _Anchor]:
    """The prior, its start model and the anchor on the skewed local data (apart from the
    whole-task head: one head over the local classes, one over the task's whole list)."""
    prior = Continual.of(parent[0], [parent[1]], parent=PARENT)
    start = _start_model(backend, prior.delta)
    a = _anchor(backend, start, _skewed(), TASK, prior, CONFIG, 16)
    assert a is not None
    return prior, start, a


def test_the_anchor_spans_the_tasks_whole_class_list(
    backend: TextBackend,
    parent: tuple[Composite, Distilled],
    anchored: tuple[Continual, nn.Module, _Anchor],
) -> None:
    """Same task: the local classes plus the replayed ones. No replayed set of this task (a
    new task: the parent never learned it), no ΔW (nothing to remember) or a zero weight: no
    anchor."""
    prior, start, a = anchored
    d, local = parent[1], _skewed()
    assert [c.shape[0] for c in a.classes] == [2, 3]  # local head, then the task's whole list
    assert all(p.shape[0] == len(local) for p in a.probs)
    assert all(torch.allclose(p.sum(dim=1), torch.ones(len(local))) for p in a.probs)
    assert _anchor(backend, start, local, "another", prior, CONFIG, 16) is None
    no_delta = Continual(parent=PARENT, replay=(d,))
    assert _anchor(backend, start, local, TASK, no_delta, CONFIG, 16) is None
    off = TrainConfig(**{**CONFIG.__dict__, "lwf_weight": 0.0})
    assert _anchor(backend, start, local, TASK, prior, off, 16) is None


def test_the_parent_probabilities_are_tempered(
    backend: TextBackend, anchored: tuple[Continual, nn.Module, _Anchor]
) -> None:
    _, start, a = anchored
    local = _skewed()
    feats = backend.features(start, backend.prepare(local.items))
    want = (cosine_logits(feats, a.classes[1], backend.logit_scale) / 2.0).softmax(dim=1)
    assert torch.allclose(a.probs[1], want.detach(), atol=1e-6)


def test_skew_training_is_seeded(
    backend: TextBackend, parent: tuple[Composite, Distilled], tmp_path: Path
) -> None:
    """LwF on (the default): one seed, byte-identical adapters; the term changes what is
    learned."""
    a = _train(backend, parent, tmp_path / "a")
    b = _train(backend, parent, tmp_path / "b")
    c = _train(backend, parent, tmp_path / "c", lwf_weight=0.0)
    name = "adapter_model.safetensors"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()


def test_the_defaults_learn_without_forgetting_over_whole_tasks() -> None:
    config = TrainConfig()
    assert (config.lwf_weight, config.lwf_replay_weight, config.lwf_temperature) == (1, 1, 2)
    assert config.whole_task
    assert config.prior_correction is None  # on for a fusion composite only


def test_a_new_task_trains_exactly_as_without_lwf(
    backend: TextBackend, parent: tuple[Composite, Distilled], tmp_path: Path
) -> None:
    """Task-incremental (the replay holds other tasks only): LwF has nothing to keep, and the
    adapter is byte-identical to one trained with it off."""
    records = Examples(toy_records().items, toy_records().labels, ("break", "germ", "growth"))
    prior = Continual.of(parent[0], [parent[1]], parent=PARENT)
    outs = []
    for weight in (0.0, 1.0):
        config = TrainConfig(**{**CONFIG.__dict__, "lwf_weight": weight})
        out = tmp_path / f"w{weight:g}"
        train_plugin(backend, records, task="other", out=out, config=config, continual=prior)
        outs.append((out / "adapter_model.safetensors").read_bytes())
    assert outs[0] == outs[1]


def test_the_local_data_and_its_tasks_replay_share_one_class_list(
    parent: tuple[Composite, Distilled],
) -> None:
    """The local classes keep their order and indices; the replayed set of the same task is
    widened to the same list; a set of another task keeps its own."""
    d = parent[1]
    other = Distilled(d.inputs, d.labels, ("break", "germ", "growth"), "other", d.kind, d.base)
    local = _skewed()
    prior = Continual(parent=PARENT, replay=(d, other))
    data, widened = _over_whole_task(local, TASK, prior)
    whole = (*local.classes, toy_records().classes[2])
    assert (data.items, data.labels, data.classes) == (local.items, local.labels, whole)
    same, kept = widened.replay
    assert same.classes == whole
    assert kept is other
    assert [same.classes[y] for y in same.labels] == [d.classes[y] for y in d.labels]
    assert widened.parent == prior.parent
    assert widened.n_replay == prior.n_replay


def test_one_head_pushes_local_inputs_off_the_replayed_classes(
    backend: TextBackend, parent: tuple[Composite, Distilled], tmp_path: Path
) -> None:
    """Scored apart, the local loss never sees the classes the institution lacks; over the
    whole list it learns that its own inputs are not of them: less of the composite's
    probability on the absent class for the local inputs."""
    absent = toy_records().classes[2]
    train_set, _ = stratified_split(_skewed(), CONFIG.val_fraction, CONFIG.seed)
    classes = toy_records().classes
    mass = {}
    for whole in (False, True):
        out = _train(
            backend,
            parent,
            tmp_path / str(whole),
            lwf_weight=0.0,
            whole_task=whole,
            prior_correction=False,
        )
        plugin = load_adapter(out, base=backend.fingerprint, limits=Limits())
        p = model_probs(backend, apply(parent[0], plugin, (1.0, 1.0)), train_set, classes)
        mass[whole] = float(p[:, classes.index(absent)].mean())
    assert mass[True] < mass[False]


def test_the_replay_carries_the_parents_tempered_probabilities(
    backend: TextBackend, anchored: tuple[Continual, nn.Module, _Anchor]
) -> None:
    """Each replayed example's row: the parent's softmax(logits / T) over its own set's
    classes, zero past them (sets of fewer classes share the pool)."""
    prior, start, _ = anchored
    d = prior.replay[0]
    small = Distilled(
        d.inputs[:2], torch.tensor([0, 1]), ("break", "germ"), "other", d.kind, d.base
    )
    (pool,) = _replay_pools(backend, [d, small])
    soft = _with_parent(backend, start, pool, CONFIG, 4).soft
    assert soft is not None
    feats = backend.features(start, pool.inputs)
    for k, classes in enumerate(pool.classes):
        rows = soft[pool.task == k]
        logits = cosine_logits(feats[pool.task == k], classes, backend.logit_scale)
        want = (logits / CONFIG.lwf_temperature).softmax(dim=1)
        assert torch.allclose(rows[:, : classes.shape[0]], want, atol=1e-6)
        assert torch.all(rows[:, classes.shape[0] :] == 0)


def test_replay_lwf_keeps_the_parent_on_the_replayed_examples(
    backend: TextBackend, parent: tuple[Composite, Distilled], tmp_path: Path
) -> None:
    """A new task on top of the composite: with the term, the composite + plugin stays nearer
    the parent on the replayed (old task's) examples."""
    records = Examples(toy_records().items, toy_records().labels, ("break", "germ", "growth"))
    prior = Continual.of(parent[0], [parent[1]], parent=PARENT)
    (pool,) = _replay_pools(backend, prior.replay)
    start = _start_model(backend, prior.delta)
    p = _with_parent(backend, start, pool, replace(CONFIG, lwf_temperature=1.0), 64).soft
    assert p is not None
    kl = {}
    for weight in (0.0, 4.0):
        config = replace(CONFIG, lwf_replay_weight=weight)
        out = tmp_path / f"w{weight:g}"
        train_plugin(backend, records, task="other", out=out, config=config, continual=prior)
        plugin = load_adapter(out, base=backend.fingerprint, limits=Limits())
        model = _start_model(backend, delta_weights(apply(parent[0], plugin, (1.0, 1.0)).modules))
        logits = cosine_logits(
            backend.features(model, pool.inputs), pool.classes[0], backend.logit_scale
        )
        kl[weight] = float((p * (p.log() - logits.log_softmax(dim=1))).sum(dim=1).mean())
    assert kl[4.0] < kl[0.0]


def test_the_log_prior_is_the_members_own_counts_over_the_whole_task(
    parent: tuple[Composite, Distilled],
) -> None:
    """One pseudo-count per class, so the class the member lacks is finite; only when the
    composite holds the task (a replayed set of it) and the correction is on: by default
    for a fusion composite only."""
    local = _skewed()
    prior = Continual(parent=PARENT, replay=(parent[1],), mode="fusion")
    data, _ = _over_whole_task(local, TASK, prior)
    got = _log_prior(data, TASK, prior, CONFIG)
    assert got is not None
    counts = [sum(1 for y in data.labels if y == k) + 1 for k in range(len(data.classes))]
    want = torch.tensor([c / sum(counts) for c in counts], dtype=torch.float64).log().float()
    assert counts[-1] == 1
    assert torch.equal(got, want)
    assert _log_prior(data, "another", prior, CONFIG) is None  # a new task: its own prior
    assert _log_prior(data, TASK, None, CONFIG) is None  # independent training
    assert _log_prior(data, TASK, prior, replace(CONFIG, prior_correction=False)) is None
    for mode in ("stack", "mixture"):
        other = replace(prior, mode=mode)
        assert _log_prior(data, TASK, other, CONFIG) is None
        forced = _log_prior(data, TASK, other, replace(CONFIG, prior_correction=True))
        assert forced is not None
        assert torch.equal(forced, got)


def test_the_prior_correction_keeps_the_classes_a_member_lacks(
    backend: TextBackend, parent: tuple[Composite, Distilled], tmp_path: Path
) -> None:
    """Unadjusted, every local step pushes the absent class down on the member's inputs and
    the member's skew becomes the shared task's prior; adjusted by its own prior, the local
    loss leaves more of the composite's probability on the class it lacks."""
    absent = toy_records().classes[2]
    train_set, _ = stratified_split(_skewed(), CONFIG.val_fraction, CONFIG.seed)
    classes = toy_records().classes
    mass = {}
    for on in (False, True):
        out = _train(backend, parent, tmp_path / str(on), lwf_weight=0.0, prior_correction=on)
        plugin = load_adapter(out, base=backend.fingerprint, limits=Limits())
        p = model_probs(backend, apply(parent[0], plugin, (1.0, 1.0)), train_set, classes)
        mass[on] = float(p[:, classes.index(absent)].mean())
    assert mass[True] > mass[False]


def test_a_new_task_trains_exactly_as_without_the_prior_correction(
    backend: TextBackend, parent: tuple[Composite, Distilled], tmp_path: Path
) -> None:
    """Task-incremental: no replayed set of the member's task, so no adjustment, and the
    adapter is byte-identical to one trained with the correction off."""
    records = Examples(toy_records().items, toy_records().labels, ("break", "germ", "growth"))
    prior = Continual.of(parent[0], [parent[1]], parent=PARENT)
    outs = []
    for on in (False, True):
        out = tmp_path / str(on)
        config = replace(CONFIG, prior_correction=on)
        train_plugin(backend, records, task="other", out=out, config=config, continual=prior)
        outs.append((out / "adapter_model.safetensors").read_bytes())
    assert outs[0] == outs[1]
