"""The CLIP backend on a tiny seeded CLIPModel and synthetic PNG folders: load, towers,
paper-default plugin training, and pixel-space distillation with augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pipeline_fixtures import save_tiny_clip, write_toy_images

from merge.lora import load_adapter
from merge.pipeline.backends import load_backend
from merge.pipeline.backends.base import DualEncoder
from merge.pipeline.datasets import read_image_folder, stratified_split
from merge.pipeline.distill import DistillConfig, distill
from merge.pipeline.evaluate import evaluate
from merge.pipeline.train import TrainConfig, train_plugin
from merge.spec import Limits


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def backend(checkpoint: Path) -> DualEncoder:
    return load_backend("clip", str(checkpoint))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_toy_images(root)
    return root


def test_loads_with_a_stable_fingerprint(backend: DualEncoder, checkpoint: Path) -> None:
    assert load_backend("clip", str(checkpoint)).fingerprint == backend.fingerprint
    assert backend.input_kind == "pixels"
    assert backend.logit_scale == pytest.approx(float(torch.tensor(2.6592).exp()), rel=1e-4)


def test_lora_targets_are_the_vision_tower_only(backend: DualEncoder) -> None:
    targets = backend.lora_targets
    assert targets[-1] == "visual_projection"
    assert sorted(targets[:-1]) == sorted(
        f"vision_model.encoder.layers.{i}.self_attn.{p}"
        for i in range(2)
        for p in ("q_proj", "v_proj")
    )


def test_towers_give_unit_features(backend: DualEncoder, images: Path) -> None:
    records = read_image_folder(images)
    pixels = backend.prepare(records.items[:3])
    assert pixels.shape == (3, 3, 32, 32)
    f = backend.encode_inputs(pixels)
    g = backend.encode_classes(records.classes)
    assert f.shape == (3, 16)
    assert g.shape == (2, 16)
    assert torch.allclose(f.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(g.norm(dim=1), torch.ones(2), atol=1e-5)
    delta = {"visual_projection": torch.randn(16, 32, generator=torch.Generator().manual_seed(0))}
    assert not torch.allclose(backend.encode_inputs(pixels, delta), f, atol=1e-4)


def test_paper_default_plugin_trains_and_evaluates_through_deltas(
    backend: DualEncoder, images: Path, tmp_path: Path
) -> None:
    records = read_image_folder(images)
    config = TrainConfig.for_backend("clip", steps=6, batch_size=4, progress=False)
    assert (config.rank, config.alpha, config.dropout) == (16, 16, 0.1)
    result = train_plugin(backend, records, task="lesions", out=tmp_path / "p", config=config)
    adapter = load_adapter(result.out, base=backend.fingerprint, limits=Limits())
    assert set(adapter.modules) == set(backend.lora_targets)
    assert result.losses[-1] < result.losses[0]
    _, val = stratified_split(records, config.val_fraction, config.seed)
    got = evaluate(backend, adapter, val)
    assert got.accuracy == result.plugin.accuracy
    assert got.auc == pytest.approx(result.plugin.auc, abs=1e-9)


def test_pixel_distillation_with_augmentation(backend: DualEncoder, images: Path) -> None:
    records = read_image_folder(images)
    config = DistillConfig(ipc=2, steps=8, progress=False)
    report = distill(backend, records, task="lesions", config=config)
    d = report.distilled
    assert d.inputs.shape == (4, 3, 32, 32)
    assert d.kind == "pixels"
    assert d.labels.tolist() == [0, 0, 1, 1]
    assert sum(report.losses[-3:]) < sum(report.losses[:3])
    again = distill(backend, records, task="lesions", config=config).distilled
    assert torch.equal(again.inputs, d.inputs)
