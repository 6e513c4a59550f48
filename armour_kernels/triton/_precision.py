"""Tensor-core dot precisions of the Nyström and Performer kernels.

Three roles, one constexpr each (the error each role gives is in the kernel modules' docstrings):
  PREC_EXACT  the m×m landmark matrices and their pseudo-inverse: 3×TF32 (≈ fp32) whatever the
              input dtype (docs/nystrom.md keeps that part in fp32)
  PREC_SCORE  products that feed an exp (landmark scores, Performer's projection u = x·Pᵀ):
              3×TF32 for fp32 inputs, TF32 for 16-bit ones (exact 16-bit inputs, operands
              rounded to 10 mantissa bits, so no worse than the inputs themselves)
  PREC_VALUE  value-path products: TF32 for 16-bit inputs; for fp32 inputs TF32 when the user
              allowed it (torch.backends.cuda.matmul.allow_tf32), else 3×TF32
A product of probabilities (∈ [0, 1]) with a 16-bit input tensor (A3·v, A1ᵀ·dO, φ(k)ᵀ·v) runs
natively in that 16-bit type (`dot_native`), as FlashAttention's P·V does. Every dot accumulates
in fp32. The interpreter ignores input_precision (it computes in fp32/fp64).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

EXACT = "tf32x3"


def precisions(dtype) -> dict:
    """The PREC_* constexprs for inputs of `dtype`."""
    fp32 = dtype == torch.float32
    return dict(PREC_EXACT=EXACT, PREC_SCORE=EXACT if fp32 else "tf32",
                PREC_VALUE="tf32" if not fp32 or torch.backends.cuda.matmul.allow_tf32 else EXACT)


@triton.jit
def dot(a, b, PREC: tl.constexpr):
    """a·b on fp32 operands at input precision PREC (16-bit inputs convert exactly)."""
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)


@triton.jit
def dot_native(p, x, PREC: tl.constexpr):
    """p·x with p an fp32 tile of weights in [0, 1] (probabilities, features) and x a loaded input
    tile: in x's own type on the tensor cores when x is 16-bit (p rounded to it), else `dot`."""
    if x.dtype == tl.float32:
        return tl.dot(p, x, input_precision=PREC)
    else:
        return tl.dot(p.to(x.dtype), x)
