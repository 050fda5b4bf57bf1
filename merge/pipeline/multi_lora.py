"""Multi-LoRA batching: several plugins of one frozen base in a single forward pass.

A mixture's members share the base and differ only in their low-rank updates, so one pass can
compute every member's output: the batch is repeated once per member along the batch
dimension (member-major: rows ``m*b .. (m+1)*b`` belong to member ``m``), and each adapted
Linear adds member ``m``'s update ``x_m Aₘᵀ Bₘᵀ`` to its slice of the output with two batched
matmuls. The base weights are read once per layer per pass instead of once per member, and no
dense ``ΔW`` is formed.

Ranks may differ between members: a module's factors are zero-padded to its largest rank
(the padding adds exact zeros). A member without a module gets no update on its slice.

The updates are applied by a ``TorchFunctionMode`` that recognises the adapted Linears by
their weight tensors, so, as with ``call_with_delta``, the shared base is never modified (no
hooks, no swapped weights) and another thread's forward pass of the same base is unaffected
(function modes are per thread). It assumes what both backends' input towers do: every
adapted Linear sees its rows batch-first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from merge.lora import LoraModule
from merge.pipeline.backends.base import DualEncoder
from merge.pipeline.errors import DeltaError

Members = Sequence[Mapping[str, LoraModule]]


@dataclass(frozen=True, eq=False)
class _Update:
    """The stacked factors of one module: ``a_t [m', in, r]``, ``b_t [m', r, out]`` for the
    ``m'`` members in ``rows`` (``None``: all ``members``, in order)."""

    a_t: torch.Tensor
    b_t: torch.Tensor
    rows: torch.Tensor | None
    members: int

    def add_to(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (the base Linear's output for input ``x``) plus each slice's update."""
        if x.shape[0] % self.members:
            raise DeltaError(f"{x.shape[0]} rows do not split into {self.members} members")
        xs = x.reshape(self.members, -1, x.shape[-1])
        ys = out.reshape(self.members, -1, out.shape[-1])
        if self.rows is None:
            return torch.baddbmm(ys, torch.bmm(xs, self.a_t), self.b_t).reshape(out.shape)
        low = torch.bmm(torch.bmm(xs.index_select(0, self.rows), self.a_t), self.b_t)
        return ys.index_add(0, self.rows, low).reshape(out.shape)


class _LowRankMode(TorchFunctionMode):
    """Adds the stacked updates to every ``F.linear`` whose weight is an adapted one."""

    def __init__(self, updates: Mapping[int, tuple[torch.Tensor, _Update]]) -> None:
        super().__init__()
        self._updates = updates

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            found = self._updates.get(id(weight))
            if found is not None and found[0] is weight:
                x = args[0] if args else kwargs["input"]
                return found[1].add_to(x, out)
        return out


class MemberStack:
    """The LoRA modules of a few members, stacked per module path for one batched pass over
    ``model`` (checked against its Linears, as ``delta_params`` checks a dense delta)."""

    def __init__(self, model: nn.Module, members: Members) -> None:
        if not members:
            raise DeltaError("a member stack needs at least one member")
        linears = dict(model.named_modules())
        self._size = len(members)
        self._updates: dict[int, tuple[torch.Tensor, _Update]] = {}
        for path in sorted({p for m in members for p in m}):
            weight = _linear_weight(linears, path, members)
            self._updates[id(weight)] = (weight, _stack(path, members, weight))

    @property
    def size(self) -> int:
        """How many members one pass computes."""
        return self._size

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside: a forward pass of the base over ``size`` member-major copies of a batch
        adds each member's update to its copy (in this thread only)."""
        with _LowRankMode(self._updates):
            yield

    def features(self, backend: DualEncoder, inputs: torch.Tensor) -> torch.Tensor:
        """``[size, n, d]``: each member's unit-norm features of ``inputs`` (``[n, ...]``)."""
        n = inputs.shape[0]
        repeated = inputs.repeat(self._size, *([1] * (inputs.dim() - 1)))
        with self.applied():
            feats = backend.features(backend.model, repeated)
        return feats.reshape(self._size, n, -1)

    def __repr__(self) -> str:
        return f"<MemberStack members={self._size} modules={len(self._updates)}>"


def member_stacks(model: nn.Module, members: Members, per_pass: int) -> list[MemberStack]:
    """``members`` in order, ``per_pass`` at most to a stack (a pass computes ``per_pass x
    batch`` rows)."""
    if per_pass < 1:
        raise ValueError(f"members per pass must be >= 1, got {per_pass}")
    return [MemberStack(model, members[i : i + per_pass]) for i in range(0, len(members), per_pass)]


def _linear_weight(linears: Mapping[str, nn.Module], path: str, members: Members) -> torch.Tensor:
    module = linears.get(path)
    if not isinstance(module, nn.Linear):
        raise DeltaError(f"a member names {path!r}, which is not a Linear module of the base")
    shape = tuple(module.weight.shape)
    for m in members:
        if path in m and m[path].shape != shape:
            raise DeltaError(
                f"a member's {path!r} composes to {m[path].shape}, the base weight {shape}"
            )
    weight: torch.Tensor = module.weight
    return weight


def _stack(path: str, members: Members, weight: torch.Tensor) -> _Update:
    """Zero-padded ``Aᵀ`` and ``Bᵀ`` of the members that adapt ``path``."""
    have = [i for i, m in enumerate(members) if path in m]
    rank = max(members[i][path].rank for i in have)
    out_dim, in_dim = weight.shape
    options: dict[str, Any] = {"dtype": weight.dtype, "device": weight.device}
    a_t = torch.zeros(len(have), in_dim, rank, **options)
    b_t = torch.zeros(len(have), rank, out_dim, **options)
    for k, i in enumerate(have):
        lora = members[i][path]
        a_t[k, :, : lora.rank] = lora.A.T
        b_t[k, : lora.rank, :] = lora.B.T
    rows = None if len(have) == len(members) else torch.tensor(have, device=weight.device)
    return _Update(a_t, b_t, rows, len(members))
