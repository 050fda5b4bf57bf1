"""Check untrusted distilled-set bytes against the network's base and the commit's classes.

A distilled set is replayed by every later author's coefficient search, so a malformed one
would break the network's searches long after it was merged: it is judged at receipt, from the
bytes alone, like an adapter. The format is ``merge.pipeline.distill``'s (``inputs`` float32,
``labels`` int64, metadata ``format``/``kind``/``classes``); the header is bounded before the
library parses anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from merge.base_shapes import BaseShapes
from merge.errors import AdapterFormatError, DistilledError
from merge.lora_config import strict_json_object

DISTILLED_FORMAT = "medforge-distilled/1"
MAX_HEADER_BYTES = 1 << 20
_DTYPES = {"inputs": "F32", "labels": "I64"}


def check_distilled(
    data: bytes, *, classes: Sequence[str], shapes: BaseShapes, base: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` if ``data`` is a distilled set for ``classes`` on this base;
    raises ``DistilledError`` naming what is wrong."""
    header = _header(data)
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != DISTILLED_FORMAT:
        raise DistilledError(f"not a {DISTILLED_FORMAT} file (metadata {meta!r:.80})")
    if meta.get("kind") != shapes.input_kind:
        raise DistilledError(
            f"inputs are {meta.get('kind')!r}, the base takes {shapes.input_kind!r}"
        )
    if meta.get("base") not in (None, "", base):
        raise DistilledError(f"distilled on base {meta.get('base')!r}, not the network's")
    _check_classes(meta.get("classes"), classes)
    if set(header) != set(_DTYPES):
        raise DistilledError(f"tensors {sorted(header)}, expected {sorted(_DTYPES)}")
    for name, dtype in _DTYPES.items():
        entry = header[name]
        if not isinstance(entry, dict) or entry.get("dtype") != dtype:
            raise DistilledError(f"{name} must be {dtype}")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise DistilledError(f"safetensors refused the file: {exc}") from exc
    inputs, labels = tensors["inputs"], tensors["labels"]
    _check_tensors(inputs, labels, len(classes), shapes)
    return inputs, labels


def _header(data: bytes) -> dict[str, object]:
    if len(data) < 8:
        raise DistilledError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > min(MAX_HEADER_BYTES, len(data) - 8):
        raise DistilledError(f"safetensors header claims {n} bytes")
    try:
        return strict_json_object(data[8 : 8 + n], "distilled", "safetensors header")
    except AdapterFormatError as exc:
        raise DistilledError(exc.reason) from exc


def _check_classes(raw: object, classes: Sequence[str]) -> None:
    try:
        named = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        named = None
    if named != list(classes):
        raise DistilledError(f"classes {named!r:.120} are not the commit's {list(classes)!r:.120}")


def _check_tensors(
    inputs: torch.Tensor, labels: torch.Tensor, n_classes: int, shapes: BaseShapes
) -> None:
    if inputs.dim() < 2 or not shapes.fits_input(tuple(inputs.shape[1:])):
        want = ["*" if d < 0 else d for d in shapes.input_shape]
        raise DistilledError(f"inputs {list(inputs.shape)}: one example must be {want}")
    if labels.dim() != 1 or labels.shape[0] != inputs.shape[0] or inputs.shape[0] == 0:
        raise DistilledError(f"{list(labels.shape)} labels for {inputs.shape[0]} inputs")
    if bool((labels < 0).any()) or bool((labels >= n_classes).any()):
        raise DistilledError(f"labels outside the commit's {n_classes} classes")
    if not bool(torch.isfinite(inputs).all()):
        raise DistilledError("inputs hold NaN or Inf")
