"""Canonical hash of a base model: what a network's genesis names as its base.

Two loads of the same checkpoint on any machine must give the same fingerprint, so the hash
covers only what defines the function: the config without load-time bookkeeping (local path,
library version) and, for every state-dict entry in sorted order, its name, dtype, shape and
raw little-endian bytes. Each field is length-prefixed so no two models share a byte stream.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

import torch

_MAGIC = b"medforge-base-fingerprint/1\n"

# Set by whoever saves or loads the model, not part of what it computes: the path, library
# version, the class that saved it, and dtype (every tensor's dtype is hashed itself).
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "_commit_hash",
        "architectures",
        "dtype",
        "torch_dtype",
    }
)


def canonical_config(config: Mapping[str, Any]) -> bytes:
    """JSON with sorted keys, no whitespace and the volatile keys removed (recursively)."""
    return json.dumps(_strip(config), sort_keys=True, separators=(",", ":")).encode()


def _strip(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
    if isinstance(value, list | tuple):
        return [_strip(v) for v in value]
    return value


def _field(h: Any, data: bytes) -> None:
    h.update(struct.pack("<Q", len(data)))
    h.update(data)


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw bytes of a tensor in row-major order (works for every dtype, bfloat16 included)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def fingerprint_state(config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 of ``config`` + ``state`` (names sorted, dtype, shape, raw bytes)."""
    h = hashlib.sha256(_MAGIC)
    _field(h, canonical_config(config))
    for name in sorted(state):
        t = state[name]
        _field(h, name.encode())
        _field(h, str(t.dtype).removeprefix("torch.").encode())
        _field(h, json.dumps(list(t.shape)).encode())
        _field(h, tensor_bytes(t))
    return h.hexdigest()


def fingerprint_model(model: torch.nn.Module, config: Mapping[str, Any]) -> str:
    """Fingerprint of a loaded model (its ``state_dict``) with its config dict."""
    return fingerprint_state(config, model.state_dict())
