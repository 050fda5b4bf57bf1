"""Distribution matching: it matches, it is seeded, real-record init warns, and the file
follows docs/CONTRACTS.md."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import tiny_text_backend, toy_records
from safetensors import safe_open

from merge.pipeline.backends.text import TextBackend
from merge.pipeline.distill import (
    DistillConfig,
    Distilled,
    DistillReport,
    RealRecordsWarning,
    distill,
    load_distilled,
    save_distilled,
)
from merge.pipeline.errors import DataFormatError, EmptyClassError, LabelError
from merge.safetensors_io import write_canonical

CONFIG = DistillConfig(ipc=2, steps=25, progress=False)


@pytest.fixture(scope="module")
def backend() -> TextBackend:
    return tiny_text_backend()


@pytest.fixture(scope="module")
def report(backend: TextBackend) -> DistillReport:
    return distill(backend, toy_records(), task="toy", config=CONFIG)


def _class_means(backend: TextBackend, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    feats = backend.encode_inputs(inputs)
    return torch.stack([feats[labels == c].mean(0) for c in range(3)])


def test_matching_moves_synthetic_class_means_onto_the_real_ones(
    backend: TextBackend, report: DistillReport
) -> None:
    records = toy_records()
    real = _class_means(backend, backend.prepare(records.items), records.label_tensor())
    d = report.distilled
    noise = backend.synthetic_noise(len(d.labels), torch.Generator().manual_seed(CONFIG.seed))
    gap_before = (_class_means(backend, noise, d.labels) - real).norm()
    gap_after = (_class_means(backend, d.inputs, d.labels) - real).norm()
    assert gap_after < 0.5 * gap_before
    assert report.losses[-1] < report.losses[0]


def test_shapes_labels_and_metadata(backend: TextBackend, report: DistillReport) -> None:
    d = report.distilled
    assert d.inputs.shape == (6, backend.synthetic_length, 32)
    assert d.inputs.dtype == torch.float32
    assert d.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert (d.task, d.kind, d.base) == ("toy", "text-embeds", backend.fingerprint)
    assert d.classes == ("fracture", "infection", "tumour")


def test_file_follows_the_contract_and_round_trips(report: DistillReport, tmp_path: Path) -> None:
    path = tmp_path / "toy.safetensors"
    save_distilled(report.distilled, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == {"inputs", "labels"}
    assert meta["format"] == "medforge-distilled/1"
    assert json.loads(meta["classes"]) == ["fracture", "infection", "tumour"]
    assert (meta["task"], meta["kind"]) == ("toy", "text-embeds")
    back = load_distilled(path)
    assert torch.equal(back.inputs, report.distilled.inputs)
    assert torch.equal(back.labels, report.distilled.labels)
    save_distilled(back, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_seeded(backend: TextBackend, report: DistillReport) -> None:
    again = distill(backend, toy_records(), task="toy", config=CONFIG)
    assert torch.equal(again.distilled.inputs, report.distilled.inputs)
    other = distill(backend, toy_records(), task="toy", config=replace(CONFIG, seed=1))
    assert not torch.equal(other.distilled.inputs, report.distilled.inputs)


def test_init_from_real_needs_the_flag_and_warns(backend: TextBackend) -> None:
    quick = replace(CONFIG, steps=0, init_from_real=True)
    with pytest.warns(RealRecordsWarning, match="patient"):
        d = distill(backend, toy_records(), task="toy", config=quick).distilled
    records = toy_records()
    real_rows = backend.to_synthetic(backend.prepare(records.items))[:, : d.inputs.shape[1]]
    # With zero steps every synthetic row is a real record's embedding: that is the danger.
    assert any(torch.equal(d.inputs[0], r) for r in real_rows)


def test_noise_init_never_copies_a_record(backend: TextBackend) -> None:
    d = distill(backend, toy_records(), task="toy", config=replace(CONFIG, steps=0)).distilled
    real_rows = backend.to_synthetic(backend.prepare(toy_records().items))
    assert not any(torch.equal(d.inputs[0], r[: d.inputs.shape[1]]) for r in real_rows)


def test_bad_input_is_refused(backend: TextBackend, tmp_path: Path) -> None:
    records = toy_records()
    no_tumour = records.subset(i for i, y in enumerate(records.labels) if y != 2)
    with pytest.raises(EmptyClassError):
        distill(backend, no_tumour, task="toy", config=CONFIG)
    with pytest.raises(LabelError):
        distill(backend, records, task="toy", config=replace(CONFIG, ipc=0))


def test_load_refuses_broken_files(report: DistillReport, tmp_path: Path) -> None:
    d = report.distilled
    bad_labels = tmp_path / "labels.safetensors"
    save_distilled(Distilled(d.inputs, d.labels + 5, d.classes, "t", d.kind, d.base), bad_labels)
    with pytest.raises(LabelError):
        load_distilled(bad_labels)
    wrong = tmp_path / "format.safetensors"
    write_canonical(wrong, {"inputs": d.inputs, "labels": d.labels}, {"format": "other/1"})
    with pytest.raises(DataFormatError):
        load_distilled(wrong)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(DataFormatError):
        load_distilled(garbage)
