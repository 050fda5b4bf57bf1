"""The base fingerprint: stable for the same model, different for any change that matters."""

from __future__ import annotations

import torch
from pipeline_fixtures import tiny_bert

from merge.fingerprint import canonical_config, fingerprint_model, fingerprint_state


def _fp(model: torch.nn.Module) -> str:
    return fingerprint_model(model, model.config.to_dict())  # type: ignore[operator,union-attr]


def test_same_seed_same_fingerprint_different_seed_differs() -> None:
    assert _fp(tiny_bert(0)) == _fp(tiny_bert(0))
    assert _fp(tiny_bert(0)) != _fp(tiny_bert(1))


def test_one_ulp_in_one_weight_changes_it() -> None:
    model = tiny_bert(0)
    before = _fp(model)
    with torch.no_grad():
        w = model.encoder.layer[1].attention.self.value.weight  # type: ignore[union-attr,index]
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(float("inf")))
    assert _fp(model) != before


def test_load_bookkeeping_is_ignored_but_real_config_counts() -> None:
    state = {"w": torch.ones(2, 2)}
    config = {"hidden_size": 2, "_name_or_path": "/home/alice/model", "transformers_version": "5"}
    moved = {**config, "_name_or_path": "/srv/bob/model", "transformers_version": "6"}
    assert fingerprint_state(config, state) == fingerprint_state(moved, state)
    assert fingerprint_state(config, state) != fingerprint_state(
        {**config, "hidden_size": 3}, state
    )


def test_order_of_names_does_not_matter_but_dtype_shape_and_names_do() -> None:
    a, b = torch.arange(4.0), torch.zeros(3)
    assert fingerprint_state({}, {"a": a, "b": b}) == fingerprint_state({}, {"b": b, "a": a})
    base = fingerprint_state({}, {"a": a})
    assert fingerprint_state({}, {"a": a.double()}) != base
    assert fingerprint_state({}, {"a": a.reshape(2, 2)}) != base
    assert fingerprint_state({}, {"c": a}) != base


def test_bfloat16_hashes_raw_bytes() -> None:
    t = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    assert fingerprint_state({}, {"t": t}) != fingerprint_state({}, {"t": t.float()})


def test_canonical_config_is_sorted_compact_json() -> None:
    assert canonical_config({"b": 1, "a": {"_name_or_path": "x", "c": [1, 2]}}) == (
        b'{"a":{"c":[1,2]},"b":1}'
    )
