"""Offline merging for researchers (``medforge merge``): adapter directories in, composite out.

No network and no signatures: the caller names the adapters and their coefficients in the
order to fold them. Every adapter that declares a base must declare the same one as the
first that does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from merge.fold import Composite, apply, empty
from merge.lora import load_adapter
from merge.spec import MergeSpec


def merge_paths(spec: MergeSpec, steps: Sequence[tuple[Path, tuple[float, float]]]) -> Composite:
    """Load and validate each adapter directory under ``spec.limits``, then fold them in
    order with ``spec.mode``; a refused adapter raises before anything is returned."""
    c = empty(spec.mode)
    base: str | None = None
    for path, coeffs in steps:
        adapter = load_adapter(path, base=base, limits=spec.limits, name=str(path))
        base = adapter.base or None  # the first adapter that declares a base sets it
        c = apply(c, adapter, coeffs)
    return c
