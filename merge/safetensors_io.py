"""Byte-stable safetensors files: one content, one byte string.

Plugins and distilled sets are content-addressed blobs, so the same tensors and metadata must
always give the same bytes. ``safetensors`` keeps metadata in a hash map whose order changes
from call to call; this writes the header with sorted keys instead (tensor data is laid out in
sorted name order by ``safetensors`` already, so offsets are unchanged).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save


def canonical_safetensors(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> bytes:
    """Safetensors bytes with a sorted, compact, space-padded (8-byte aligned) header."""
    raw = save({k: tensors[k].contiguous() for k in sorted(tensors)}, metadata=dict(metadata))
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items()))}
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + size :]


def write_canonical(path: Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, str]) -> None:
    path.write_bytes(canonical_safetensors(tensors, meta))
