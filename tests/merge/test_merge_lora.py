"""The loader: real PEFT adapters load exactly; every bad input is a typed error naming why."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from merge_fixtures import BASE, LIMITS, TinyNet, adapter_files, base_shapes, lora_keys
from merge_fixtures import make_peft_adapter as make
from safetensors.torch import load_file

from merge import errors
from merge.digest import adapter_digest
from merge.lora import exact_norm, load_adapter, load_adapter_bytes
from merge.spec import Limits

A = torch.ones(2, 12)
B = torch.ones(12, 2)


def raw_factors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def test_real_peft_adapter_loads_with_scale_folded_into_b(tmp_path: Path) -> None:
    path = make(tmp_path / "a", seed=1, r=4, lora_alpha=8)
    adapter = load_adapter(path, base=None, limits=LIMITS, shapes=base_shapes(TinyNet()))
    raw = raw_factors(path)
    assert list(adapter.modules) == ["enc.q", "enc.v", "head"]
    for name, module in adapter.modules.items():
        prefix = f"base_model.model.{name}"
        a, b = raw[f"{prefix}.lora_A.weight"], raw[f"{prefix}.lora_B.weight"]
        assert torch.equal(module.A, a)
        assert torch.equal(module.B, torch.mul(b, torch.tensor(8 / 4, dtype=torch.float32)))


def test_rslora_scale_is_alpha_over_sqrt_r(tmp_path: Path) -> None:
    path = make(tmp_path / "a", seed=2, r=4, lora_alpha=3, use_rslora=True)
    adapter = load_adapter(path, base=None, limits=LIMITS)
    b = raw_factors(path)["base_model.model.head.lora_B.weight"]
    expected = torch.mul(b, torch.tensor(3 / math.sqrt(4), dtype=torch.float32))
    assert torch.equal(adapter.modules["head"].B, expected)


def test_rank_and_alpha_patterns_resolve_per_module_like_peft(tmp_path: Path) -> None:
    path = make(
        tmp_path / "a",
        seed=3,
        r=4,
        lora_alpha=4,
        rank_pattern={"head": 2},
        alpha_pattern={"enc.v": 16},
    )
    adapter = load_adapter(path, base=None, limits=LIMITS)
    raw = raw_factors(path)
    assert [m.rank for m in adapter.modules.values()] == [4, 4, 2]
    for name, scale in (("enc.q", 1.0), ("enc.v", 4.0), ("head", 2.0)):
        b = raw[f"base_model.model.{name}.lora_B.weight"]
        assert torch.equal(adapter.modules[name].B, torch.mul(b, torch.tensor(scale)))


def test_bytes_and_directory_give_the_same_adapter(tmp_path: Path) -> None:
    path = make(tmp_path / "a", seed=4)
    from_dir = load_adapter(path, base=None, limits=LIMITS)
    from_bytes = load_adapter_bytes(
        (path / "adapter_config.json").read_bytes(),
        (path / "adapter_model.safetensors").read_bytes(),
        base=None,
        limits=LIMITS,
    )
    assert adapter_digest(from_dir) == adapter_digest(from_bytes)


def test_declared_base_from_metadata_must_match() -> None:
    cfg, st_bytes = adapter_files(lora_keys("enc.q", A, B), metadata={"base": "abc"})
    assert load_adapter_bytes(cfg, st_bytes, base="abc", limits=LIMITS).base == "abc"
    with pytest.raises(errors.BaseMismatchError, match="'abc'"):
        load_adapter_bytes(cfg, st_bytes, base="other", limits=LIMITS, name="alice")


@given(st.permutations(["enc.q", "enc.v", "head"]))
@settings(max_examples=10, deadline=None)
def test_tensor_order_in_file_does_not_change_the_adapter(order: list[str]) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    for name in order:
        tensors.update(
            lora_keys(name, torch.randn(2, 12, generator=gen), torch.randn(12, 2, generator=gen))
        )
    shuffled = {k: tensors[k] for k in reversed(list(tensors))}
    one = load_adapter_bytes(*adapter_files(tensors), base=BASE, limits=LIMITS)
    two = load_adapter_bytes(*adapter_files(shuffled), base=BASE, limits=LIMITS)
    assert adapter_digest(one) == adapter_digest(two)


def _nan_b() -> torch.Tensor:
    b = B.clone()
    b[3, 1] = float("nan")
    return b


BAD_TENSORS = [
    ("nan", lora_keys("enc.q", A, _nan_b()), errors.NonFiniteError, "enc.q.lora_B"),
    ("inf", lora_keys("enc.q", A * float("inf"), B), errors.NonFiniteError, "enc.q.lora_A"),
    (
        "missing B",
        {"base_model.model.enc.q.lora_A.weight": A},
        errors.MissingTensorError,
        "enc.q.lora_B",
    ),
    (
        "extra tensor",
        {**lora_keys("enc.q", A, B), "base_model.model.enc.q.weight": B.clone()},
        errors.UnexpectedTensorError,
        "enc.q.weight",
    ),
    (
        "dora magnitude",
        {
            **lora_keys("enc.q", A, B),
            "base_model.model.enc.q.lora_magnitude_vector": torch.ones(12),
        },
        errors.ShapeError,
        "lora_magnitude_vector",
    ),
    (
        "no prefix",
        {"enc.q.lora_A.weight": A, "enc.q.lora_B.weight": B},
        errors.UnexpectedTensorError,
        "enc.q.lora_A",
    ),
    (
        "rank vs config",
        lora_keys("enc.q", torch.ones(3, 12), torch.ones(12, 3)),
        errors.ShapeError,
        "rank 2",
    ),
    ("A/B disagree", lora_keys("enc.q", A, torch.ones(12, 3)), errors.ShapeError, "enc.q"),
    ("3-D factor", lora_keys("enc.q", torch.ones(2, 12, 1), B), errors.ShapeError, "2-D"),
    ("empty", {}, errors.MissingTensorError, "no LoRA tensors"),
    ("int dtype", lora_keys("enc.q", A.long(), B), errors.AdapterFormatError, "dtype"),
]


@pytest.mark.parametrize(
    ("case", "tensors", "error", "needle"), BAD_TENSORS, ids=[c[0] for c in BAD_TENSORS]
)
def test_bad_tensors_are_refused_with_a_typed_error(
    case: str, tensors: dict[str, torch.Tensor], error: type[Exception], needle: str
) -> None:
    with pytest.raises(error, match=needle) as info:
        load_adapter_bytes(*adapter_files(tensors), base=BASE, limits=LIMITS, name="mallory")
    assert info.value.adapter == "mallory"  # type: ignore[attr-defined]


BAD_CONFIGS = [
    ({"use_dora": True}, "DoRA"),
    ({"lora_bias": True}, "lora_bias"),
    ({"bias": "all"}, "bias"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out"),
    ({"modules_to_save": ["head"]}, "modules_to_save"),
    ({"init_lora_weights": "pissa"}, "pissa"),
    ({"loftq_config": {"loftq_bits": 4}}, "LoftQ"),
    ({"some_future_option": 3}, "some_future_option"),
    ({"peft_type": "IA3"}, "IA3"),
    ({"rank_pattern": {"(a+)+$": 2}}, "regex"),
]


@pytest.mark.parametrize(("config", "needle"), BAD_CONFIGS, ids=[c[1] for c in BAD_CONFIGS])
def test_unsupported_peft_variants_are_refused(config: dict[str, object], needle: str) -> None:
    with pytest.raises(errors.UnsupportedAdapterError, match=needle):
        load_adapter_bytes(
            *adapter_files(lora_keys("enc.q", A, B), config), base=BASE, limits=LIMITS
        )


@pytest.mark.parametrize(
    "config",
    [
        b"[1]",
        b"{",
        b'{"r": 2, "r": 3}',
        b'{"r": NaN}',
        b"\xff",
        json.dumps({"peft_type": "LORA", "r": 0}).encode(),
        json.dumps({"peft_type": "LORA", "r": 2}).encode(),
    ],
)
def test_malformed_configs_are_format_errors(config: bytes) -> None:
    _, st_bytes = adapter_files(lora_keys("enc.q", A, B))
    with pytest.raises(errors.AdapterFormatError):
        load_adapter_bytes(config, st_bytes, base=None, limits=LIMITS)


def test_dora_saved_by_peft_is_refused(tmp_path: Path) -> None:
    path = make(tmp_path / "d", seed=1, use_dora=True)
    with pytest.raises(errors.UnsupportedAdapterError, match="DoRA"):
        load_adapter(path, base=None, limits=LIMITS)


def test_shapes_must_fit_the_base() -> None:
    cfg, st_bytes = adapter_files(lora_keys("enc.q", A, torch.ones(7, 2)))
    with pytest.raises(errors.ShapeError, match=r"\(7, 12\)"):
        load_adapter_bytes(cfg, st_bytes, base=BASE, limits=LIMITS, shapes=base_shapes(TinyNet()))
    cfg, st_bytes = adapter_files(lora_keys("enc.nope", A, B))
    with pytest.raises(errors.ShapeError, match="no such Linear"):
        load_adapter_bytes(cfg, st_bytes, base=BASE, limits=LIMITS, shapes=base_shapes(TinyNet()))


def _header_only(header: dict[str, object], body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def test_absurd_header_claims_are_refused_before_allocating() -> None:
    cfg, _ = adapter_files({})
    huge = {
        "base_model.model.x.lora_A.weight": {
            "dtype": "F32",
            "shape": [1 << 30, 1 << 30],
            "data_offsets": [0, 1 << 62],
        }
    }
    with pytest.raises(errors.LimitError, match="elements"):
        load_adapter_bytes(cfg, _header_only(huge), base=None, limits=LIMITS)
    lying = {
        "base_model.model.x.lora_A.weight": {
            "dtype": "F32",
            "shape": [2, 2],
            "data_offsets": [0, 16],
        }
    }
    with pytest.raises(errors.AdapterFormatError, match="data_offsets"):
        load_adapter_bytes(cfg, _header_only(lying, b"\0" * 8), base=None, limits=LIMITS)
    with pytest.raises(errors.AdapterFormatError, match="header claims"):
        load_adapter_bytes(cfg, struct.pack("<Q", 1 << 60) + b"{}", base=None, limits=LIMITS)
    with pytest.raises(errors.AdapterFormatError, match="8-byte"):
        load_adapter_bytes(cfg, b"\1\0", base=None, limits=LIMITS)


def test_limits_on_rank_norm_and_blob_size() -> None:
    files = adapter_files(lora_keys("enc.q", A, B))
    with pytest.raises(errors.LimitError, match="rank 2 > 1"):
        load_adapter_bytes(*files, base=BASE, limits=Limits(max_rank=1))
    # ||B·(alpha/r)||_F = sqrt(24) ≈ 4.9
    with pytest.raises(errors.LimitError, match="norm 4.89898"):
        load_adapter_bytes(*files, base=BASE, limits=Limits(max_norm=4.8))
    assert load_adapter_bytes(*files, base=BASE, limits=Limits(max_norm=4.9)).modules
    with pytest.raises(errors.LimitError, match="bytes"):
        load_adapter_bytes(*files, base=BASE, limits=Limits(max_blob_bytes=100))
    with pytest.raises(errors.LimitError, match="elements"):
        load_adapter_bytes(*files, base=BASE, limits=Limits(max_tensor_elements=23))


def test_directory_missing_a_file(tmp_path: Path) -> None:
    path = make(tmp_path / "a", seed=1)
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(errors.AdapterFormatError, match="missing adapter_model.safetensors"):
        load_adapter(path, base=None, limits=LIMITS)


@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=200))
@settings(max_examples=50, deadline=None)
def test_exact_norm_is_the_correctly_rounded_norm(values: list[float]) -> None:
    t = torch.tensor(values, dtype=torch.float32)
    assert exact_norm(t) == math.sqrt(math.fsum(v * v for v in t.double().tolist()))
    assert exact_norm(t) == pytest.approx(float(torch.linalg.vector_norm(t.double())), rel=1e-12)


def test_half_precision_factors_widen_to_float32_exactly() -> None:
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 12, generator=gen).half(), torch.randn(12, 2, generator=gen).bfloat16()
    adapter = load_adapter_bytes(*adapter_files(lora_keys("enc.q", a, b)), base=BASE, limits=LIMITS)
    assert torch.equal(adapter.modules["enc.q"].A, a.float())
    assert torch.equal(adapter.modules["enc.q"].B, b.float())  # alpha / r = 1
