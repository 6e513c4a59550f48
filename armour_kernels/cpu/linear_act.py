"""CPU launcher of Linear + bias + Hardswish (LeViT's folded MLP first layer / stem GEMM epilogue).

The GEMM is ATen's (oneDNN / MKL: a hand-written GEMM would not beat it at these sizes); the
C++ side adds the bias and applies Hardswish in one vectorised in-place pass over the GEMM
output, instead of addmm's bias pass plus a separate Hardswish pass and its allocation.
float16 is computed in float32 and cast back.
"""
from __future__ import annotations

import torch

from . import _require


def linear_hardswish_forward(x, weight, bias=None, *, gemm="auto"):
    """hardswish(x @ weight.T + bias), same dtype and leading shape as x.

    gemm: "auto", "onednn_fused", "onednn" or "aten" (see csrc/ops.h; auto = onednn_fused
    when torch has oneDNN, else aten + our epilogue).
    """
    C = _require()
    if x.dtype == torch.float16:
        y = C.linear_hardswish(x.float(), weight.float(), None if bias is None else bias.float(), gemm)
        return y.half()
    return C.linear_hardswish(x, weight, bias, gemm)
