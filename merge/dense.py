"""A module held as its dense ``ΔW``, and the exact product that makes one from LoRA factors.

Stacked factors grow with every commit (rank ``Σ r_j``); once they cost more than the dense
``ΔW`` they are the wrong representation (issue 13). A ``DenseModule`` holds ``W = ΔW`` itself.

``exact_product(B, A)`` is the one matrix product the fold may use, because its bytes do not
depend on the BLAS, the CPU or the thread count. It is one Ozaki-scheme slice:

1. each row of ``B`` is scaled by a power of two (from its largest magnitude, ``frexp``) and
   truncated to an integer of at most ``β`` bits; each column of ``A`` likewise;
2. the integer matrices are multiplied in float64. Every product is an integer below
   ``2^(2β)`` and every partial sum below ``2^(2β + ⌈log2 K⌉) <= 2^52``: all exactly
   representable, so *any* summation order, blocking or FMA gives the same exact result;
3. the scale is undone by exact powers of two (on the operands, before the product: the
   same value, see the code) and the result rounded once to float32; an exact zero is
   always ``+0.0`` (kernels disagree on its sign).

Steps 1 and 3 are elementwise, correctly rounded operations. The truncation in step 1 keeps
``β >= 20`` bits below each row's (column's) largest element, so the product is as accurate as
a float32 matmul (error ~2^-β relative to ``max|B_i|·max|A_j|·K``), and it is a pure function
of the bytes of ``B`` and ``A``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Integer bits per slice: 2β + ⌈log2 K⌉ <= 52 keeps one bit of headroom under float64's 53.
_MANTISSA_BUDGET = 52


@dataclass(frozen=True, eq=False)
class DenseModule:
    """One adapted Linear held as ``ΔW = W`` (``[out, in]``, float32)."""

    W: torch.Tensor

    def __post_init__(self) -> None:
        if self.W.dtype != torch.float32 or self.W.dim() != 2:
            raise TypeError(f"a dense ΔW is 2-d float32, got {self.W.dtype} {self.W.dim()}-d")

    @property
    def shape(self) -> tuple[int, int]:
        """``(out, in)`` of the base weight this module adapts."""
        return int(self.W.shape[0]), int(self.W.shape[1])

    @property
    def nbytes(self) -> int:
        return self.W.numel() * self.W.element_size()


def slice_bits(k: int) -> int:
    """``β`` for an inner dimension of ``k``: the largest with ``2β + ⌈log2 k⌉ <= 52``."""
    return (_MANTISSA_BUDGET - max(1, math.ceil(math.log2(max(k, 2))))) // 2


def exact_product(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``B @ A`` (``[out, K] @ [K, in]``, float32) with bytes independent of the BLAS."""
    return accumulate(None, None, b, a)


def accumulate(
    w: torch.Tensor | None, t: torch.Tensor | None, b: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """``add(mul(W, t), exact_product(B, A))`` (``W`` None: the product alone; ``t`` None or
    exactly 1.0: ``W`` as is, since x·1 = x), with the same bytes as those three operations
    but computed in blocks of rows: the float64 product of one block, its cast and the update
    stay in cache instead of streaming an [out, in] float64 matrix through memory (5x faster
    for 768x768). Every element is the same IEEE operations on the same exact values
    whatever the block, so the blocking is invisible in the bytes."""
    if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(f"B {tuple(b.shape)} and A {tuple(a.shape)} do not compose")
    out_dim, k, in_dim = int(b.shape[0]), int(b.shape[1]), int(a.shape[1])
    if w is not None and tuple(w.shape) != (out_dim, in_dim):
        raise ValueError(f"W {tuple(w.shape)} does not match B @ A ({out_dim}, {in_dim})")
    result = torch.empty(out_dim, in_dim, dtype=torch.float32)
    if k == 0:
        result.zero_()
        if w is not None:
            result.add_(_times(w, t))  # 0 + x: x, with a -0.0 in W made +0.0
        return result
    b_scaled, a_scaled = _scaled_operands(b, a, slice_bits(k))
    rows = max(1, _BLOCK_ELEMENTS // max(in_dim, 1))
    scale = None if w is None or t is None or bool(t == 1.0) else t  # once, not per block
    p64 = torch.empty(rows, in_dim, dtype=torch.float64)
    p32 = torch.empty(rows, in_dim, dtype=torch.float32)
    # The blocks as views made once (torch.split): slicing every operand per block costs more
    # than the elementwise work of a block.
    outs = torch.split(result, rows)
    olds = torch.split(w, rows) if w is not None else (None,) * len(outs)
    for b_block, block, old in zip(torch.split(b_scaled, rows), outs, olds, strict=True):
        n = block.shape[0]
        q64, q32 = (p64, p32) if n == rows else (p64[:n], p32[:n])
        torch.mm(b_block, a_scaled, out=q64)  # exact: see the module doc
        # The product alone is cast straight into the result, an update's into scratch.
        cast = block if old is None else q32
        cast.copy_(q64)  # one correctly rounded cast
        # An exact zero's sign depends on the kernel (this machine's K=1 path gives -0.0 for
        # -1·0, a summing kernel starting at +0.0 gives +0.0): adding +0.0 makes it +0.0.
        # The sum below does not make this pass redundant: W·t can be -0.0 too (a -0.0 in
        # W, a negative t, a tiny negative product rounding to zero), and -0.0 + -0.0 = -0.0.
        cast.add_(0.0)
        if old is None:
            continue
        if scale is None:
            torch.add(old, q32, out=block)  # alpha 1: the correctly rounded sum, as add_
        else:
            torch.mul(old, scale, out=block)
            block.add_(q32)
    return result


# float64 elements of one block of the product: 128 Ki (1 MiB, its float32 cast and the
# result's block 512 KiB each) stays in a core's L2 cache and the nearest L3. Each block
# costs five torch calls whatever its size, and at 64 Ki (10 blocks for 768x768) that
# dispatch cost measured more than the larger blocks' cache misses (~7% per 768x768 update).
_BLOCK_ELEMENTS = 1 << 17


def _times(w: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    return w if t is None or bool(t == 1.0) else torch.mul(w, t)


def _scaled_operands(
    b: torch.Tensor, a: torch.Tensor, beta: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``B`` and ``A`` as float64 integers of at most ``β`` bits per row (column), each row
    (column) then scaled back by its exact power of two *before* the product: every term of
    the sum for (i, j) carries the same factor 2^(e_i + e_j - 2β), so the partial sums are
    integers below 2^52 times that factor, exactly representable (float64's exponent range
    covers any float32 operands), and the product is exactly the post-scaled one."""
    if b.dtype != torch.float32 or a.dtype != torch.float32:
        raise TypeError(f"the exact product takes float32 factors, got {b.dtype}, {a.dtype}")
    # B's rows and A's columns side by side as the columns of one [K, out + in] matrix: one
    # chain of ops instead of two (each costs more than its arithmetic at these sizes), and
    # every line is reduced along dim 0, vectorised across columns, where a reduction along
    # B's short rows is 10x slower. The results are views back into it (B column-major).
    out_dim = int(b.shape[0])
    lines = _truncated(torch.cat([b.t(), a], dim=1), beta)
    return lines[:, :out_dim].t(), lines[:, out_dim:]


def _truncated(x: torch.Tensor, beta: int) -> torch.Tensor:
    """``x`` (float32) in float64, each element truncated to an integer multiple of
    ``2^(e - β)``, where ``e`` is the ``frexp`` exponent of its column's largest magnitude
    (``|v| < 2^β`` integers, scaled back). An all-zero column has exponent 0 and stays zero.
    Scaling by a power of two is exact in float64, so this is the same value whether the
    steps are fused or not; the ops are few because each costs more than its arithmetic."""
    peak = x.abs().amax(dim=0, keepdim=True)  # exact: a max is one of its elements
    _, exps = torch.frexp(peak)  # float32's frexp: a float32 peak's exponent, exactly
    e = exps.to(torch.int64)
    up = _pow2(beta - e)
    return torch.trunc(x.double().mul_(up)).mul_(torch.reciprocal(up))  # 1/2^k: exact


def _pow2(exponents: torch.Tensor) -> torch.Tensor:
    """``2.0**e`` as float64, exactly: the IEEE bits themselves (biased exponent, zero
    mantissa). torch.ldexp computes 2**e through pow, which we do not rely on. The exponents
    are ``β - e`` with ``e`` a float32's ``frexp`` exponent (``[-148, 128]``, or 0) and
    ``β <= 25``, so ``[-128, 173]``: inside float64's normal range, and so is their
    reciprocal; float32 operands are checked, so no value reaches here outside it."""
    return ((exponents + 1023) << 52).view(torch.float64)
