"""Linear + bias + Hardswish as one op: hardswish(x @ weightᵀ + bias).

LeViT's MLP first layer (after BatchNorm folding) and its stem GEMMs end in Hardswish (docs/levit.md).
The op is a torch custom op (works under torch.compile) with a fake (meta) implementation and
an autograd formula in plain PyTorch; the backward recomputes the pre-activation with one GEMM
instead of saving it, so the fused forward never writes it to memory.

Backends (armour_kernels._backend.resolve_backend): "cpu" → the C++ extension (ATen GEMM +
fused bias/Hardswish epilogue), "triton" → armour_kernels.triton.linear_act, "reference" →
F.hardswish(F.linear(...)).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._backend import resolve_backend

__all__ = ["linear_hardswish"]


def _check(x, weight, bias):
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"linear_hardswish: {name} must be a tensor, got {type(t).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"linear_hardswish: weight must be (out_features, in_features), got {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear_hardswish: x's last dim must be in_features={weight.shape[1]}, got x {tuple(x.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"linear_hardswish: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"linear_hardswish: {name} is {t.dtype} on {t.device}, x is {x.dtype} on {x.device}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"linear_hardswish: floating-point inputs only, got {x.dtype}")


@torch.library.custom_op("armour_kernels::linear_hardswish", mutates_args=())
def _linear_hardswish(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    if backend == "cpu":
        from ..cpu.linear_act import linear_hardswish_forward
        return linear_hardswish_forward(x, weight, bias)
    if backend == "triton":
        from ..triton.linear_act import linear_hardswish_forward
        return linear_hardswish_forward(x, weight, bias)
    return F.hardswish(F.linear(x, weight, bias))


@_linear_hardswish.register_fake
def _(x, weight, bias, backend):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, weight, bias, _ = inputs
    ctx.save_for_backward(x, weight, bias)


def _backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    z = F.linear(x, weight, bias)  # recomputed pre-activation (see module docstring)
    dz = torch.ops.aten.hardswish_backward(grad, z)
    dx = dz @ weight if ctx.needs_input_grad[0] else None
    dz2 = dz.reshape(-1, dz.shape[-1])
    dw = dz2.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
    db = dz2.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
    return dx, dw, db, None


_linear_hardswish.register_autograd(_backward, setup_context=_setup_context)


def linear_hardswish(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                     backend: str = "auto") -> torch.Tensor:
    """hardswish(x @ weight.T + bias): x (..., in), weight (out, in), bias (out,) or None."""
    _check(x, weight, bias)
    return _linear_hardswish(x, weight, bias, resolve_backend(backend, x.device, "linear_hardswish"))
