"""The fold: a composite is a pure, bit-exact function of (mode, [(adapter, coeffs), ...]).

Determinism rules, each one load-bearing (every node must compute identical bytes):

- coefficients arrive as python floats (float64) and are cast once to 0-dim float32 tensors;
- every update is ``torch.mul`` then ``torch.add``: two correctly rounded IEEE operations per
  element. Never ``add(..., alpha=w)``, ``addcmul`` or ``lerp``: torch's CPU add kernel is
  ``fmadd(other, alpha, self)``, which rounds ``w·x + y`` once where another build or the
  scalar tail loop rounds twice. With the default ``alpha=1`` the product is exact, so both
  paths give the correctly rounded sum;
- no BLAS matmul or reduction anywhere on this path (``delta_weights`` is for evaluation
  only); the one product the fold takes is ``merge.dense.exact_product``, whose bytes do not
  depend on the BLAS, the CPU or the thread count;
- modules are visited in sorted order and stored sorted; nothing reads a global RNG.

Modes (w1, w2 = the commit's coefficients):

- **fusion** (the paper's code): ``A' = w1·A + w2·A_new`` and ``B' = w1·B + w2·B_new``, rank
  dimensions zero-padded to the larger rank, a module absent on one side counts as zeros;
- **stack** (exact): ``B' = [w1·B, w2·B_new]``, ``A' = [A; A_new]``, so
  ``ΔW' = w1·ΔW + w2·ΔW_new`` with no cross terms and no dense matrix;
- **stack, compacted** (``compaction``, a ``merge.compaction.Compaction``; issue 13): a
  factored result whose rank the policy finds due (a function of its rank and shape only) is
  stored as ``DenseModule(W = exact_product(B', A'))``; a dense module then updates as
  ``W' = add(mul(W, w1), exact_product(mul(B_new, w2), A_new))`` (``mul(W, w1)`` where the
  commit lacks the module; a factor of exactly 1.0 is skipped, x·1 = x), with the same
  float32 casts and mul-then-add as above. A dense module stays dense whatever the policy
  passed (``None`` only stops new conversions), and without a policy no module ever turns
  dense, so every composite without one keeps its bytes;
- **mixture**: members kept whole, weights ``λ ← [w1·λ_1, ..., w1·λ_k, w2]`` in python floats.

The first commit onto an empty composite gives ``w2·L`` (fusion/stack) or ``[w2]`` (mixture).

Per-module coefficients (``module_coeffs``, a ``merge.groups.ModuleCoeffs``): in fusion and
stack each module takes its group's pair where the commit names one, else the scalar pair, with
exactly the same two operations per element; without them (``None``) every module takes the
scalar pair, bytes and digest unchanged. A mixture weights whole members' outputs, where a
module's pair has no meaning: it refuses them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from merge.compaction import Compaction
from merge.dense import DenseModule, accumulate, exact_product
from merge.errors import CoefficientError, ModeError, ShapeError
from merge.groups import ModuleCoeffs
from merge.lora import LoraAdapter, LoraModule
from merge.spec import MODES

Coeffs = tuple[float, float]
# A composite's module: factors, or (stack with compaction) the dense ΔW.
Module = LoraModule | DenseModule
# One fold step: an adapter, its scalar pair and optionally its per-group pairs.
Step = (
    tuple[LoraAdapter, Sequence[float]] | tuple[LoraAdapter, Sequence[float], ModuleCoeffs | None]
)


@dataclass(frozen=True, eq=False)
class Composite:
    """A merged model. Compare composites by ``merge.digest.composite_digest``."""

    mode: str
    modules: Mapping[str, Module] = field(default_factory=dict)
    members: tuple[LoraAdapter, ...] = ()
    weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ModeError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        if self.mode == "mixture" and self.modules:
            raise ModeError("a mixture keeps members, not merged modules")
        if self.mode != "mixture" and (self.members or self.weights):
            raise ModeError(f"a {self.mode} composite has no members")
        if len(self.members) != len(self.weights):
            raise ModeError("a mixture needs one weight per member")
        if self.mode != "stack" and any(isinstance(m, DenseModule) for m in self.modules.values()):
            raise ModeError(f"a {self.mode} composite has no dense modules (only stack compacts)")
        object.__setattr__(
            self, "modules", MappingProxyType({k: self.modules[k] for k in sorted(self.modules)})
        )

    @property
    def is_empty(self) -> bool:
        return not self.modules and not self.members

    def __repr__(self) -> str:
        if self.mode == "mixture":
            return f"<Composite mixture members={len(self.members)}>"
        ranks = sorted({m.rank for m in self.modules.values() if isinstance(m, LoraModule)})
        dense = sum(isinstance(m, DenseModule) for m in self.modules.values())
        tail = f" dense={dense}" if dense else ""
        return f"<Composite {self.mode} modules={len(self.modules)} ranks={ranks}{tail}>"


def empty(mode: str) -> Composite:
    return Composite(mode=mode)


def apply(
    c: Composite,
    adapter: LoraAdapter,
    coeffs: Sequence[float],
    module_coeffs: ModuleCoeffs | None = None,
    *,
    compaction: Compaction | None = None,
) -> Composite:
    """Merge one commit into ``c``; pure (neither input is modified), bit-exact.

    ``module_coeffs``: the commit's per-group pairs (fusion/stack only); a module of no named
    group takes ``coeffs``. ``compaction``: when a stacked module turns dense (stack only;
    ``None``: never)."""
    w1, w2 = check_coeffs(coeffs)
    if compaction is not None and c.mode != "stack":
        raise ModeError(f"compaction applies to stack only, not {c.mode}")
    if c.mode == "mixture":
        if module_coeffs is not None:
            raise ModeError("a mixture weights whole members: per-module coefficients do not apply")
        return Composite(
            "mixture", members=(*c.members, adapter), weights=(*(w1 * lam for lam in c.weights), w2)
        )
    _check_fits(c, adapter)
    scalar = (_f32(w1), _f32(w2))
    named = module_coeffs.pairs if module_coeffs is not None else {}
    groups = {g: (_f32(a), _f32(b)) for g, (a, b) in named.items()}  # cast once, as the scalar
    modules: dict[str, Module] = {}
    for name in sorted(set(c.modules) | set(adapter.modules)):
        group = module_coeffs.group(name) if module_coeffs is not None else None
        t1, t2 = scalar if group is None else groups[group]
        merged = _merge_module(c.mode, c.modules.get(name), adapter.modules.get(name), t1, t2)
        modules[name] = _compacted(merged, compaction)
    return Composite(c.mode, modules=modules)


def fold(mode: str, steps: Iterable[Step], *, compaction: Compaction | None = None) -> Composite:
    """Apply commits in the given (already canonical) order onto ``empty(mode)``."""
    c = empty(mode)
    for step in steps:
        c = apply(c, step[0], step[1], step[2] if len(step) == 3 else None, compaction=compaction)
    return c


def delta_weights(modules: Mapping[str, Module]) -> dict[str, torch.Tensor]:
    """Dense ``{module: ΔW}`` for evaluation only: ``B @ A`` (BLAS: not part of any digest),
    or a dense module's own ``W`` (shared, not copied: callers never write into a delta)."""
    return {name: m.W if isinstance(m, DenseModule) else m.B @ m.A for name, m in modules.items()}


def uniform_average(
    mode: str, adapters: Sequence[LoraAdapter], *, compaction: Compaction | None = None
) -> Composite:
    """Baseline: every adapter weighted 1/n (fusion averages factors, stack averages ΔW)."""
    if not adapters:
        raise ModeError("uniform_average needs at least one adapter")
    w = 1.0 / len(adapters)
    return fold(mode, [(a, (1.0, w)) for a in adapters], compaction=compaction)


def single_task(mode: str, adapter: LoraAdapter) -> Composite:
    """Baseline: one institution's plugin alone."""
    return apply(empty(mode), adapter, (1.0, 1.0))


def check_coeffs(coeffs: Sequence[float]) -> Coeffs:
    """Exactly two finite python floats (ints accepted; bools, NaN and Inf refused)."""
    if len(coeffs) != 2:
        raise CoefficientError(f"expected 2 coefficients, got {len(coeffs)}")
    out = []
    for x in coeffs:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise CoefficientError(f"coefficient {x!r} is not a finite float")
        out.append(float(x))
    return out[0], out[1]


def _f32(w: float) -> torch.Tensor:
    return torch.tensor(w, dtype=torch.float32)


def _merge_module(
    mode: str, old: Module | None, new: LoraModule | None, t1: torch.Tensor, t2: torch.Tensor
) -> Module:
    """One module of ``apply``: ``old`` (the composite's) and ``new`` (the commit's) merged."""
    if isinstance(old, DenseModule):  # stack only (Composite refuses it elsewhere)
        return _dense_step(old, new, t1, t2)
    if old is None:
        assert new is not None
        return LoraModule(A=_scaled_a(mode, new.A, t2), B=torch.mul(new.B, t2))
    if new is None:
        return LoraModule(A=_scaled_a(mode, old.A, t1), B=torch.mul(old.B, t1))
    return _fuse(old, new, t1, t2) if mode == "fusion" else _stack(old, new, t1, t2)


def _dense_step(
    old: DenseModule, new: LoraModule | None, t1: torch.Tensor, t2: torch.Tensor
) -> DenseModule:
    # Mul then add, each correctly rounded (never add(alpha=) / addcmul: see the rules). w2
    # scales the commit's B before the product, as the factored stack scales it, so one pass
    # over [out, in] is saved; a multiplication by exactly 1.0 is skipped (x·1 = x bitwise).
    if new is None:
        return DenseModule(old.W if bool(t1 == 1.0) else torch.mul(old.W, t1))
    return DenseModule(accumulate(old.W, t1, torch.mul(new.B, t2), new.A))


def _compacted(m: Module, policy: Compaction | None) -> Module:
    """``m`` as its dense ``ΔW`` if it is factored and ``policy`` finds its rank due."""
    if policy is None or isinstance(m, DenseModule) or not policy.due(m.rank, m.shape):
        return m
    return DenseModule(exact_product(m.B, m.A))


def _scaled_a(mode: str, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # Fusion scales both factors; stack scales only B and keeps A as is.
    return torch.mul(a, t) if mode == "fusion" else a


def _fuse(old: LoraModule, new: LoraModule, t1: torch.Tensor, t2: torch.Tensor) -> LoraModule:
    r = max(old.rank, new.rank)
    a = torch.add(torch.mul(_pad_rows(old.A, r), t1), torch.mul(_pad_rows(new.A, r), t2))
    b = torch.add(torch.mul(_pad_cols(old.B, r), t1), torch.mul(_pad_cols(new.B, r), t2))
    return LoraModule(A=a, B=b)


def _stack(old: LoraModule, new: LoraModule, t1: torch.Tensor, t2: torch.Tensor) -> LoraModule:
    b = torch.cat([torch.mul(old.B, t1), torch.mul(new.B, t2)], dim=1)
    return LoraModule(A=torch.cat([old.A, new.A], dim=0), B=b)


def _pad_rows(a: torch.Tensor, r: int) -> torch.Tensor:
    extra = r - a.shape[0]
    return a if extra == 0 else torch.cat([a, a.new_zeros(extra, a.shape[1])], dim=0)


def _pad_cols(b: torch.Tensor, r: int) -> torch.Tensor:
    extra = r - b.shape[1]
    return b if extra == 0 else torch.cat([b, b.new_zeros(b.shape[0], extra)], dim=1)


def _check_fits(c: Composite, adapter: LoraAdapter) -> None:
    for name in sorted(set(c.modules) & set(adapter.modules)):
        have, got = c.modules[name].shape, adapter.modules[name].shape
        if have != got:
            raise ShapeError(adapter.name, name, f"ΔW shape {got} != composite's {have}")
