"""What a composite costs and how it is held, in words an operator reads (``medforge status``).

Stack factors grow with every commit until compaction turns a module dense (issue 13): status
says how many modules are factored (and their ranks), how many dense, and the bytes held, e.g.
``stack, 25 modules: 20 factored (rank 160), 5 dense`` and 25 800 000 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from merge.dense import DenseModule
from merge.fold import Composite, Module
from merge.lora import adapter_nbytes


@dataclass(frozen=True)
class Footprint:
    nbytes: int  # tensor bytes of the composite (a mixture: its members', held or not)
    representation: str


def footprint(c: Composite) -> Footprint:
    if c.mode == "mixture":
        nbytes = sum(adapter_nbytes(m) for m in c.members)
        deferred = sum(m.deferred for m in c.members)
        held = f", {deferred} read from the store when used" if deferred else ""
        return Footprint(nbytes, f"mixture, {len(c.members)} members{held}")
    modules = list(c.modules.values())
    nbytes = sum(_module_bytes(m) for m in modules)
    return Footprint(nbytes, f"{c.mode}, {_describe(modules)}")


def _describe(modules: list[Module]) -> str:
    if not modules:
        return "empty"
    dense = sum(isinstance(m, DenseModule) for m in modules)
    ranks = sorted({m.rank for m in modules if not isinstance(m, DenseModule)})
    factored = len(modules) - dense
    parts = []
    if factored:
        rank = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
        parts.append(f"{factored} factored ({rank})")
    if dense:
        parts.append(f"{dense} dense")
    return f"{len(modules)} modules: " + ", ".join(parts)


def _module_bytes(m: Module) -> int:
    tensors: Iterable[torch.Tensor] = (m.W,) if isinstance(m, DenseModule) else (m.A, m.B)
    return sum(t.numel() * t.element_size() for t in tensors)
