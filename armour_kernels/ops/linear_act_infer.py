"""Inference-only Linear + Hardswish (before or after the GEMM) [+ residual] as a torch custom op, Triton backend.

`armour_kernels::linear_act_infer` wraps armour_kernels.triton.linear_act so that a patched,
folded LeViT traces under torch.compile (the fake implementation gives the output's shape).
No autograd: the fused LeViT modules call it only when no gradient is needed and use PyTorch's
F.linear / F.hardswish otherwise. (The general op with autograd and a CPU kernel is
armour_kernels.ops.linear_act.linear_hardswish, act after the GEMM only.)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


@torch.library.custom_op("armour_kernels::linear_act_infer", mutates_args=())
def linear_act_infer(x: Tensor, weight: Tensor, bias: Optional[Tensor], act_in: bool, act_out: bool,
                     residual: Optional[Tensor] = None) -> Tensor:
    from ..triton.linear_act import linear_act_forward
    return linear_act_forward(x, weight, bias, act_in=act_in, act_out=act_out, residual=residual)


@linear_act_infer.register_fake
def _linear_act_infer_fake(x, weight, bias, act_in, act_out, residual=None):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))
