"""Tensor-core dot precisions of the Nyström and Performer kernels.

Two roles, one constexpr each:
  PREC_EXACT  3×TF32 (Triton's "tf32x3": a = a_hi + a_lo, a·b ≈ a_hi·b_hi + a_hi·b_lo + a_lo·b_hi),
              ≈ fp32 accuracy, whatever the input dtype, for what must stay fp32-accurate: the m×m
              landmark softmax and pseudo-inverse (docs/nystrom.md) and every product that feeds
              an exp (landmark scores q̃·kᵀ, qs·k̃ᵀ; Performer's projection u = x·Pᵀ, whose error
              the exp turns into a relative error of φ)
  PREC_VALUE  value-path products: TF32 for 16-bit inputs (their output rounding, 2^-9 / 2^-12,
              dominates); for fp32 inputs TF32 when the user allowed it
              (torch.backends.cuda.matmul.allow_tf32), else 3×TF32
A product of weights in [0, 1] (probabilities, softmax features) with a 16-bit input tensor
(A3·v, A1ᵀ·dO, φ(k)ᵀ·v) runs natively in that 16-bit type (`dot_native`), as FlashAttention's
P·V does. Every dot accumulates in fp32. The interpreter ignores input_precision.

Error against the fp64 reference, emulated on the CPU (bench/tf32_emulation.py: python_ref with
every product's operands rounded as the tensor cores round them; Vision Xformers layer, n =
1025, d = 32), forward output, ‖Δ‖/‖ref‖:
                          IEEE fp32   3×TF32     TF32 (every dot)
  Nyström m = 64          1.1e-7      2.5e-9     1.0e-5
  Performer softmax 110   5.7e-7      1.8e-7     1.0e-3   (the projection's error, exponentiated)
  Performer relu 110      2.6e-7      5.5e-8     2.6e-4
so 3×TF32 is as accurate as the IEEE fp32 path it replaces, and TF32 is kept off the projection.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

EXACT = "tf32x3"


def precisions(dtype) -> dict:
    """The PREC_* constexprs for inputs of `dtype`."""
    allow_tf32 = dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32
    return dict(PREC_EXACT=EXACT, PREC_VALUE="tf32" if allow_tf32 else EXACT)


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
