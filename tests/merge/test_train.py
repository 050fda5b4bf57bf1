"""Plugin training: it learns, it is seeded, its output is a PEFT adapter the merge engine
admits, evaluation through deltas agrees with PEFT, and bad input fails before training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import tiny_text_backend, toy_records

from merge.errors import BaseMismatchError
from merge.fold import apply, empty, single_task, uniform_average
from merge.lora import LoraAdapter, load_adapter
from merge.pipeline.backends.text import TextBackend
from merge.pipeline.datasets import Examples, stratified_split
from merge.pipeline.errors import DatasetTooSmallError, EmptyClassError, LabelError
from merge.pipeline.evaluate import evaluate, evaluate_table, model_probs
from merge.pipeline.train import TrainConfig, TrainResult, read_plugin_meta, train_plugin
from merge.spec import Limits

CONFIG = TrainConfig(steps=40, batch_size=8, lr=3e-2, progress=False, max_val=64)


@pytest.fixture(scope="module")
def backend() -> TextBackend:
    return tiny_text_backend()


@pytest.fixture(scope="module")
def trained(backend: TextBackend, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("plugin") / "toy"
    return train_plugin(backend, toy_records(), task="toy", out=out, config=CONFIG)


def _adapter(backend: TextBackend, path: Path) -> LoraAdapter:
    return load_adapter(path, base=backend.fingerprint, limits=Limits())


def test_training_lowers_the_loss_and_beats_the_base(trained: TrainResult) -> None:
    first, last = trained.losses[:4], trained.losses[-4:]
    assert sum(last) / 4 < 0.7 * sum(first) / 4
    assert trained.plugin.accuracy > trained.base.accuracy
    assert trained.seconds_per_step > 0


def test_writes_a_peft_adapter_the_merge_engine_admits(
    backend: TextBackend, trained: TrainResult
) -> None:
    names = {p.name for p in trained.out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "medforge.json"} <= names
    adapter = _adapter(backend, trained.out)
    assert sorted(adapter.modules) == sorted(
        f"encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")
    )
    meta = read_plugin_meta(trained.out)
    assert meta["classes"] == ["fracture", "infection", "tumour"]
    assert meta["base"] == backend.fingerprint
    assert meta["validation"]["plugin"]["accuracy"] == trained.plugin.accuracy


def test_a_plugin_for_another_base_is_refused(trained: TrainResult) -> None:
    with pytest.raises(BaseMismatchError):
        load_adapter(trained.out, base="0" * 64, limits=Limits())


def test_delta_evaluation_reproduces_the_trained_plugin(
    backend: TextBackend, trained: TrainResult
) -> None:
    """ΔW = B@A through the backend gives the metrics PEFT's own forward gave in training."""
    _, val = stratified_split(toy_records(), CONFIG.val_fraction, CONFIG.seed)
    adapter = _adapter(backend, trained.out)
    for got, want in (
        (evaluate(backend, adapter, val), trained.plugin),
        (evaluate(backend, None, val), trained.base),
    ):
        assert got.accuracy == want.accuracy
        assert got.auc == pytest.approx(want.auc, abs=1e-9)


def test_composites_of_one_plugin_equal_the_plugin(
    backend: TextBackend, trained: TrainResult
) -> None:
    records = toy_records(4)
    adapter = _adapter(backend, trained.out)
    alone = model_probs(backend, adapter, records, records.classes)
    for mode in ("fusion", "stack", "mixture"):
        probs = model_probs(backend, single_task(mode, adapter), records, records.classes)
        assert torch.allclose(probs, alone, atol=1e-5), mode
    base = model_probs(backend, None, records, records.classes)
    assert torch.allclose(model_probs(backend, empty("stack"), records, records.classes), base)


def test_mixture_is_the_weighted_sum_of_member_softmaxes(
    backend: TextBackend, trained: TrainResult, tmp_path: Path
) -> None:
    records = toy_records(3)
    first = _adapter(backend, trained.out)
    other = train_plugin(
        backend, toy_records(), task="toy", out=tmp_path / "b", config=replace(CONFIG, seed=1)
    )
    second = _adapter(backend, other.out)
    mix = apply(apply(empty("mixture"), first, (1.0, 1.0)), second, (0.25, 0.5))
    p1, p2 = (model_probs(backend, a, records, records.classes) for a in (first, second))
    got = model_probs(backend, mix, records, records.classes)
    assert torch.allclose(got, 0.25 * p1 + 0.5 * p2, atol=1e-6)
    stack = uniform_average("stack", [first, second])
    table = evaluate_table(backend, {"base": None, "stack": stack}, {"toy": records})
    assert set(table) == {"base", "stack"}
    assert table["stack"]["toy"].n == len(records)


def test_same_seed_same_bytes_and_global_rng_untouched(
    backend: TextBackend, trained: TrainResult, tmp_path: Path
) -> None:
    state = torch.random.get_rng_state()
    again = train_plugin(backend, toy_records(), task="toy", out=tmp_path / "again", config=CONFIG)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (again.out / name).read_bytes() == (trained.out / name).read_bytes()
    other = train_plugin(
        backend, toy_records(), task="toy", out=tmp_path / "s1", config=replace(CONFIG, seed=1)
    )
    safetensors = "adapter_model.safetensors"
    assert (other.out / safetensors).read_bytes() != (trained.out / safetensors).read_bytes()


def _missing_class(records: Examples) -> Examples:
    keep = [i for i, y in enumerate(records.labels) if y != 2]
    return records.subset(keep)


@pytest.mark.parametrize(
    ("records", "config", "error"),
    [
        (toy_records(2), CONFIG, DatasetTooSmallError),
        (_missing_class(toy_records()), CONFIG, EmptyClassError),
        (Examples(("a", "b"), (0, 0), ("only",)), replace(CONFIG, batch_size=1), LabelError),
    ],
)
def test_bad_input_fails_before_training(
    backend: TextBackend,
    tmp_path: Path,
    records: Examples,
    config: TrainConfig,
    error: type[Exception],
) -> None:
    out = tmp_path / "never"
    with pytest.raises(error):
        train_plugin(backend, records, task="bad", out=out, config=config)
    assert not out.exists()


def test_config_json_is_canonical(trained: TrainResult) -> None:
    text = (trained.out / "adapter_config.json").read_text()
    config = json.loads(text)
    assert config["target_modules"] == ["query", "value"]
    assert text == json.dumps(config, indent=2, sort_keys=True) + "\n"


def test_no_validation_split_trains_on_everything(backend: TextBackend, tmp_path: Path) -> None:
    config = replace(CONFIG, steps=2, val_fraction=0.0)
    result = train_plugin(backend, toy_records(), task="toy", out=tmp_path / "all", config=config)
    assert result.plugin.n == 0
    assert (tmp_path / "all" / "adapter_model.safetensors").is_file()
