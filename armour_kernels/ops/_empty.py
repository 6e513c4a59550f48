"""Results of ops with nothing to compute (an empty batch, no heads, no queries, no keys).

Every backend answers them the same way, before any kernel runs (docs/numerics.md): an empty
output, or zeros when there are queries but no keys — what PyTorch's scaled_dot_product_attention
gives — and zero gradients for every input, not None, so code that reads `.grad` works as usual.
"""
from __future__ import annotations

import torch


class _ZerosOf(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shape, *inputs):
        ctx.inputs = [(t.shape, t.dtype, t.device) for t in inputs]
        return inputs[0].new_zeros(shape)

    @staticmethod
    def backward(ctx, _grad):
        return (None, *(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.inputs))


def zeros_of(shape, *inputs) -> torch.Tensor:
    """Zeros of `shape` (dtype and device of the first input) whose gradient is zero for every tensor input."""
    return _ZerosOf.apply(tuple(shape), *(t for t in inputs if isinstance(t, torch.Tensor)))
