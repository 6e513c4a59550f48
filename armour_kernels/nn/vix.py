"""Vision Xformers softmax attention (python_ref.vix `Attention`, vit-pytorch) on `armour_kernels.attention`.

Same submodules and state-dict keys as the original (`to_qkv` without bias, laid out [q | k | v],
Armour [q | k]; `dropout` on the probabilities; `to_out` = Linear + Dropout), so either loads
the other's checkpoint. q, k and v are strided views of the projection output (B, N, parts, H, D),
read in place by the kernel. The Nyström and Performer layers of the same models run on
`armour_kernels.nn.nystrom.NystromAttention` and `armour_kernels.nn.performer.PerformerAttention`.
"""
from __future__ import annotations

import torch.nn as nn

from ..ops.attention import attention
from .rope import rotary_qkv


class FusedViXAttention(nn.Module):
    """softmax(q kᵀ / √d)·v per head (Armour: ·q, the unrotated query), RoPE on q and k if `rope`."""

    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0, rope=False, armour=False, *, backend="auto"):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.rope = rope
        self.armour = armour
        self.backend = backend
        self.to_qkv = nn.Linear(dim, inner * (2 if armour else 3), bias=False)
        self.dropout = nn.Dropout(dropout)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x):
        if self.training and self.dropout.p > 0:
            raise NotImplementedError("FusedViXAttention: the fused kernel has no attention dropout; "
                                      "set the dropout to 0 (the paper's CIFAR-10 setting) or use eval mode")
        b, n, _ = x.shape
        qkv = self.to_qkv(x).view(b, n, 2 if self.armour else 3, self.heads, self.dim_head)
        q, k = qkv[:, :, 0], qkv[:, :, 1]
        v, value = (None, "q") if self.armour else (qkv[:, :, 2], "v")
        if self.rope:
            q, k, v, value = rotary_qkv(q, k, v, value)
        out = attention(q, k, v, value=value, scale=self.scale, backend=self.backend)
        return self.to_out(out.reshape(b, n, -1))

    def extra_repr(self):
        return (f"heads={self.heads}, dim_head={self.dim_head}, rope={self.rope}, armour={self.armour}, "
                f"backend={self.backend!r}")


__all__ = ["FusedViXAttention"]
