"""The text backend: towers, deltas, synthetic embeddings, loading and refusing bases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import save_tiny_text, tiny_text_backend

from merge.pipeline.backends import load_backend
from merge.pipeline.backends.text import TextBackend
from merge.pipeline.errors import DeltaError, UnsupportedBaseError

QUERY = "encoder.layer.0.attention.self.query"


@pytest.fixture(scope="module")
def backend() -> TextBackend:
    return tiny_text_backend()


def test_class_features_are_unit_norm_and_cached(backend: TextBackend) -> None:
    g = backend.encode_classes(["fracture", "infection", "tumour"])
    assert g.shape == (3, 32)
    assert torch.allclose(g.norm(dim=1), torch.ones(3), atol=1e-5)
    assert backend.encode_classes(("fracture", "infection", "tumour")) is g


def test_padding_does_not_change_a_text(backend: TextBackend) -> None:
    alone = backend.encode_inputs(backend.prepare(["broken rib"]))
    padded = backend.encode_inputs(backend.prepare(["broken rib", "a much longer text " * 5]))
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_synthetic_embeddings_of_real_ids_give_the_same_features(backend: TextBackend) -> None:
    ids = backend.prepare(["fever and pus"])  # 6 tokens, no padding, shorter than 8
    via_ids = backend.encode_inputs(ids)
    via_embeds = backend.encode_inputs(backend.to_synthetic(ids))
    assert torch.allclose(via_ids, via_embeds, atol=1e-5)


def test_noise_has_the_synthetic_shape_and_is_seeded(backend: TextBackend) -> None:
    a = backend.synthetic_noise(4, torch.Generator().manual_seed(3))
    b = backend.synthetic_noise(4, torch.Generator().manual_seed(3))
    assert a.shape == (4, backend.synthetic_length, 32)
    assert torch.equal(a, b)
    assert backend.encode_inputs(a).shape == (4, 32)


def test_delta_changes_features_and_leaves_the_base_untouched(backend: TextBackend) -> None:
    ids = backend.prepare(["cracked rib", "viral cough"])
    weights = {k: v.clone() for k, v in backend.model.state_dict().items()}
    delta = {QUERY: torch.randn(32, 32, generator=torch.Generator().manual_seed(0))}
    moved = backend.encode_inputs(ids, delta)
    assert not torch.allclose(moved, backend.encode_inputs(ids), atol=1e-3)
    zero = backend.encode_inputs(ids, {QUERY: torch.zeros(32, 32)})
    assert torch.equal(zero, backend.encode_inputs(ids))
    assert all(torch.equal(v, weights[k]) for k, v in backend.model.state_dict().items())


def test_delta_equals_editing_the_weight(backend: TextBackend) -> None:
    ids = backend.prepare(["lung carcinoma"])
    d = 0.1 * torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    expected_model = tiny_text_backend()
    with torch.no_grad():
        query = dict(expected_model.model.named_modules())[QUERY]
        assert isinstance(query, torch.nn.Linear)
        query.weight.add_(d)
    assert torch.allclose(
        backend.encode_inputs(ids, {QUERY: d}), expected_model.encode_inputs(ids), atol=1e-5
    )


def test_bad_deltas_are_refused(backend: TextBackend) -> None:
    ids = backend.prepare(["x"])
    with pytest.raises(DeltaError, match="not a Linear"):
        backend.encode_inputs(ids, {"encoder.layer.9.attention.self.query": torch.zeros(32, 32)})
    with pytest.raises(DeltaError, match="shape"):
        backend.encode_inputs(ids, {QUERY: torch.zeros(32, 31)})


def test_lora_targets_are_query_and_value(backend: TextBackend) -> None:
    assert backend.lora_targets == ("query", "value")
    assert backend.input_kind == "text-embeds"


def test_load_backend_from_a_saved_checkpoint(tmp_path: Path, backend: TextBackend) -> None:
    loaded = load_backend("text", str(save_tiny_text(tmp_path / "tiny")))
    assert loaded.fingerprint == backend.fingerprint
    ids = backend.prepare(["benign polyp"])
    assert torch.equal(loaded.encode_inputs(ids), backend.encode_inputs(ids))


def test_unsupported_bases_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedBaseError, match="unknown backend"):
        load_backend("audio", None)
    with pytest.raises(UnsupportedBaseError, match="cannot load"):
        load_backend("text", str(tmp_path / "missing"))
    decoder = tmp_path / "gpt2"
    decoder.mkdir()
    (decoder / "config.json").write_text(json.dumps({"model_type": "gpt2", "is_decoder": True}))
    with pytest.raises(UnsupportedBaseError, match="not an encoder"):
        load_backend("text", str(decoder))
    with pytest.raises(UnsupportedBaseError, match="not a CLIP"):
        load_backend("clip", str(save_tiny_text(tmp_path / "bert")))


@pytest.mark.slow
def test_minilm_loads_offline_with_a_stable_fingerprint_and_sane_zero_shot() -> None:
    minilm = TextBackend.from_pretrained()
    classes = ["Neoplasms", "Diseases of the circulatory system"]
    texts = [
        "Malignant neoplasm of upper lobe, right bronchus or lung",
        "Acute myocardial infarction",
    ]
    logits = minilm.encode_inputs(minilm.prepare(texts)) @ minilm.encode_classes(classes).T
    assert logits.argmax(dim=1).tolist() == [0, 1]
    assert len(minilm.fingerprint) == 64
    assert minilm.fingerprint == TextBackend.from_pretrained().fingerprint
