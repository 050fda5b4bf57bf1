"""Offline merging for researchers (``medforge merge``): adapter directories in, composite out.

No network and no signatures: the caller names the adapters and their coefficients in the
order to fold them (optionally each with per-group pairs, grouped by ``spec.search.groups``),
under the spec's compaction policy (``merge.compaction``), as a node folds them.
Every adapter that declares a base must declare the same one as the first that does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from merge.compaction import Compaction
from merge.fold import Composite, apply, empty
from merge.groups import ModuleCoeffs
from merge.lora import load_adapter
from merge.spec import MergeSpec

Pair = tuple[float, float]
PathStep = tuple[Path, Pair] | tuple[Path, Pair, Mapping[str, Pair] | None]


def merge_paths(spec: MergeSpec, steps: Sequence[PathStep]) -> Composite:
    """Load and validate each adapter directory under ``spec.limits``, then fold them in
    order with ``spec.mode``; a refused adapter raises before anything is returned."""
    c = empty(spec.mode)
    policy = Compaction.of(spec)
    base: str | None = None
    for step in steps:
        path, coeffs = step[0], step[1]
        pairs = step[2] if len(step) == 3 else None
        adapter = load_adapter(path, base=base, limits=spec.limits, name=str(path))
        base = adapter.base or None  # the first adapter that declares a base sets it
        groups = ModuleCoeffs(spec.search.groups, pairs) if pairs is not None else None
        c = apply(c, adapter, coeffs, groups, compaction=policy)
    return c
