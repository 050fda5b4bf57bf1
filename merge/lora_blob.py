"""Read untrusted ``adapter_model.safetensors`` bytes without trusting the header.

The first 8 bytes give the JSON header's length; the header gives each tensor's dtype, shape
and byte range. We parse and bound all of it ourselves *before* handing the bytes to
``safetensors``, so a header that claims a 2**60-element tensor is refused without
allocating anything, and the library's own errors are translated here, in one place.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from merge.errors import AdapterFormatError, LimitError, ShapeError
from merge.lora_config import strict_json_object
from merge.spec import Limits

MAX_HEADER_BYTES = 1 << 24
# Dtypes a LoRA may arrive in; all widen to float32 exactly.
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


def read_safetensors(
    data: bytes, adapter: str, limits: Limits
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (float32, contiguous, 2-D) and the ``__metadata__`` strings."""
    if len(data) > limits.max_blob_bytes:
        raise LimitError(adapter, None, f"blob is {len(data)} bytes > {limits.max_blob_bytes}")
    header, body_len = _header(data, adapter)
    metadata = _metadata(header.pop("__metadata__", None), adapter)
    for name, info in header.items():
        _check_entry(name, info, body_len, adapter, limits)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise AdapterFormatError(adapter, None, f"safetensors refused the file: {exc}") from exc
    return {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}, metadata


def _header(data: bytes, adapter: str) -> tuple[dict[str, Any], int]:
    if len(data) < 8:
        raise AdapterFormatError(adapter, None, "safetensors file shorter than its 8-byte prefix")
    n = int.from_bytes(data[:8], "little")
    if n > min(MAX_HEADER_BYTES, len(data) - 8):
        raise AdapterFormatError(adapter, None, f"safetensors header claims {n} bytes")
    return strict_json_object(data[8 : 8 + n], adapter, "safetensors header"), len(data) - 8 - n


def _metadata(value: object, adapter: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise AdapterFormatError(adapter, None, "__metadata__ must map strings to strings")
    return dict(value)


def _check_entry(name: str, info: object, body_len: int, adapter: str, limits: Limits) -> None:
    """dtype known, shape 2-D and within limits, byte range inside the body and exact."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise AdapterFormatError(adapter, name, "malformed header entry")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in _ITEMSIZE:
        raise AdapterFormatError(adapter, name, f"dtype {dtype!r} (want F32, F16 or BF16)")
    if not _ints(shape, 8):
        raise AdapterFormatError(adapter, name, f"bad shape {shape!r}")
    if len(shape) != 2:
        raise ShapeError(adapter, name, f"LoRA factors are 2-D, got shape {shape}")
    elements = math.prod(shape)
    if elements > limits.max_tensor_elements:
        raise LimitError(adapter, name, f"{elements} elements > {limits.max_tensor_elements}")
    if not _ints(offsets, 2) or len(offsets) != 2:
        raise AdapterFormatError(adapter, name, f"bad data_offsets {offsets!r}")
    begin, end = offsets
    if not begin <= end <= body_len or end - begin != elements * _ITEMSIZE[dtype]:
        raise AdapterFormatError(adapter, name, f"data_offsets {offsets} do not fit the data")


def _ints(value: object, max_len: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= max_len
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63 for x in value)
    )
