"""Synthetic adapters for the simulator, and the fold memo its nodes share.

Why this module: the simulator (``node.sim``) runs real cores and must fold real composites to
compare their digests, but only node/forge may touch merge/ tensors (``tests/test_layers.py``).
This is the narrow door: the simulator names an adapter by its seed and a prefix of an order by
its item, and gets digests back; tensors never leave node/forge.

Rules:

- An adapter is a pure function of its seed: a ``torch.Generator`` seeded with it (never the
  global RNG); ``MODULES`` modules of rank 2 over ``DIMS`` dimensions, on the Linears of
  ``SHAPES``. It is built on its first fold and kept.
- ``Folds`` keeps the composite after every prefix it folded, keyed by the caller's name for
  that prefix (an item chain hash), so a node folds only past the longest prefix any node folded
  before: one memo serves every simulated node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from merge.base_shapes import BaseShapes
from merge.digest import composite_digest
from merge.fold import Composite, apply, empty
from merge.groups import ModuleCoeffs
from merge.lora import LoraAdapter, LoraModule
from node.forge.netspec import make_spec

BASE = "5e" * 32
DIMS = 8
MODULES = 2
# The synthetic base: the Linears ``tiny_adapter`` targets (adapters never leave the simulator).
SHAPES = BaseShapes(
    {f"encoder.layer.{k}.attention.query": (DIMS, DIMS) for k in range(MODULES)},
    "text-embeds",
    (-1, DIMS),
)

# One fold step: (adapter seed, coefficients[, the commit's per-group pairs or None]).
Step = (
    tuple[int, Sequence[float]]
    | tuple[int, Sequence[float], Mapping[str, tuple[float, float]] | None]
)


def spec(mode: str) -> dict[str, Any]:
    """The genesis ``spec`` of a simulated network: the synthetic base, merged with ``mode``."""
    return make_spec(mode, BASE, SHAPES)


def tiny_adapter(
    seed: int, *, modules: int = MODULES, rank: int = 2, dims: int = DIMS
) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    mods = {
        f"encoder.layer.{k}.attention.query": LoraModule(
            A=torch.randn(rank, dims, generator=g), B=torch.randn(dims, rank, generator=g) * 0.1
        )
        for k in range(modules)
    }
    return LoraAdapter(base=BASE, modules=mods, name=f"sim-{seed}")


class Folds:
    """Composite digests of chains of steps, memoised by prefix (see the module's rules)."""

    def __init__(self, mode: str, groups: str = "none") -> None:
        self.mode, self.groups = mode, groups
        self._folds: dict[bytes, tuple[Composite, str]] = {}
        self._adapters: dict[int, LoraAdapter] = {}

    def digest(self, keys: Sequence[bytes], step: Callable[[int], Step]) -> str:
        """The digest after ``len(keys) - 1`` steps: ``keys[j]`` names the prefix of ``j`` steps
        (``keys[0]`` the empty one), ``step(j)`` is step ``j``, asked for only if not memoised."""
        n = k = len(keys) - 1
        while k > 0 and keys[k] not in self._folds:
            k -= 1
        composite = self._folds[keys[k]][0] if k else empty(self.mode)
        for j in range(k, n):
            s = step(j)
            pairs = s[2] if len(s) == 3 else None
            groups = ModuleCoeffs(self.groups, pairs) if pairs is not None else None
            composite = apply(composite, self._adapter(s[0]), s[1], groups)
            self._folds[keys[j + 1]] = (composite, composite_digest(composite))
        return self._folds[keys[n]][1] if n else composite_digest(composite)

    def _adapter(self, seed: int) -> LoraAdapter:
        adapter = self._adapters.get(seed)
        if adapter is None:
            adapter = self._adapters[seed] = tiny_adapter(seed)
        return adapter
