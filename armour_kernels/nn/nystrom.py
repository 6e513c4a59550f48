"""NystromAttention: a drop-in for nystrom_attention.NystromAttention (0.0.14) on the fused op.

Same constructor arguments and state dict (to_qkv, to_out.0, res_conv), so switching is a
change of import. The default mode="seed" reproduces the original exactly (its pinv scaling
takes the maxima over the whole batch); mode="clean" makes every sample independent of the
others in its batch. value="q" is the Armour form: to_qkv produces only q and k, and the
(unscaled) query is the value.
"""
from __future__ import annotations

from torch import nn

from ..ops.nystrom import nystrom_attention


class NystromAttention(nn.Module):
    def __init__(self, dim, dim_head=64, heads=8, num_landmarks=256, pinv_iterations=6, residual=True,
                 residual_conv_kernel=33, eps=1e-8, dropout=0., *, value="v", mode="seed", backend="auto"):
        super().__init__()
        if value not in ("v", "q"):
            raise ValueError(f"NystromAttention: value must be 'v' or 'q', got {value!r}")
        self.eps = eps  # only the original's masked mean used it; kept for attribute parity
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.value, self.mode, self.backend = value, mode, backend
        inner_dim = heads * dim_head
        self.to_qkv = nn.Linear(dim, inner_dim * (2 if value == "q" else 3), bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout))
        self.residual = residual
        if residual:
            self.res_conv = nn.Conv2d(heads, heads, (residual_conv_kernel, 1), padding=(residual_conv_kernel // 2, 0),
                                      groups=heads, bias=False)

    def forward(self, x, mask=None, return_attn=False, return_attn_matrices=False):
        if mask is not None:
            raise NotImplementedError("NystromAttention (armour_kernels): masks are not supported by the fused op")
        if return_attn or return_attn_matrices:
            raise NotImplementedError("NystromAttention (armour_kernels): the fused op never forms the attention "
                                      "matrices, so return_attn / return_attn_matrices are not supported")
        b, n, _ = x.shape
        parts = 2 if self.value == "q" else 3
        qkv = self.to_qkv(x).view(b, n, parts, self.heads, self.dim_head)
        out = nystrom_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2] if parts == 3 else None,
                                num_landmarks=self.num_landmarks, pinv_iterations=self.pinv_iterations,
                                mode=self.mode, value=self.value,
                                conv_weight=self.res_conv.weight if self.residual else None, backend=self.backend)
        return self.to_out(out.reshape(b, n, -1))
