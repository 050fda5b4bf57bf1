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
    if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(f"B {tuple(b.shape)} and A {tuple(a.shape)} do not compose")
    k = int(b.shape[1])
    if k == 0:
        return torch.zeros(b.shape[0], a.shape[1], dtype=torch.float32)
    beta = slice_bits(k)
    b_int, b_exp = _integer_rows(b.double(), beta)
    a_int, a_exp = _integer_rows(a.double().t(), beta)
    # Each operand's rows are scaled back by their exact power of two *before* the product:
    # every term of the sum for (i, j) then carries the same factor 2^(e_i + e_j - 2β), so
    # the partial sums are still integers below 2^52 times that factor, exactly representable
    # (float64's exponent range covers any float32 operands), and the product is exactly the
    # post-scaled one without two passes over the [out, in] result.
    b_scaled = torch.mul(b_int, _pow2([v - beta for v in b_exp]).unsqueeze(1))
    a_scaled = torch.mul(a_int, _pow2([v - beta for v in a_exp]).unsqueeze(1))
    product = (b_scaled @ a_scaled.t()).to(torch.float32)  # one correctly rounded cast
    # An exact zero's sign depends on the kernel (this machine's K=1 path gives -0.0 for -1·0,
    # a summing kernel starting at +0.0 gives +0.0): adding +0.0 makes every zero +0.0.
    return torch.add(product, 0.0)


def _integer_rows(x: torch.Tensor, beta: int) -> tuple[torch.Tensor, list[int]]:
    """Each row scaled by ``2^(β - e)`` (``e``: its largest element's ``frexp`` exponent) and
    truncated to an integer with ``|v| < 2^β``; returns the integers and each row's ``e``."""
    _, exps = torch.frexp(x.abs().amax(dim=1))
    e = [int(v) for v in exps.tolist()]  # an all-zero row has exponent 0: its integers are 0
    return torch.trunc(torch.mul(x, _pow2([beta - v for v in e]).unsqueeze(1))), e


def _pow2(exponents: list[int]) -> torch.Tensor:
    # math.ldexp is exact; torch.ldexp computes 2**e through pow, which we do not rely on.
    return torch.tensor([math.ldexp(1.0, v) for v in exponents], dtype=torch.float64)
