"""PerformerAttention: a drop-in for performer_pytorch.SelfAttention (1.1.4) on the fused op.

Same constructor arguments and state dict (fast_attention.projection_matrix, to_q, to_k, to_v,
to_out), so switching is a change of import. Supported: non-causal global heads with the
softmax kernel, or generalized_attention=True with kernel_fn=nn.ReLU(). The default
mode="clean" is what performer-pytorch 1.1.4 computes; mode="seed" is the paper's code.
value="q" is the Armour form: no to_v, the query is the value.
The projection is a fixed buffer (no feature redraw: performer_pytorch's ProjectionUpdater
looks for its own FastAttention class, which this module is not).
"""
from __future__ import annotations

import math

from torch import nn

from python_ref.performer import gaussian_orthogonal_random_matrix

from ..ops.performer import performer_attention


class RandomFeatures(nn.Module):
    """Holds the (m, d) random-feature matrix under the state-dict name performer-pytorch uses."""

    def __init__(self, dim_heads, nb_features=None):
        super().__init__()
        self.dim_heads = dim_heads
        self.nb_features = nb_features if nb_features is not None else int(dim_heads * math.log(dim_heads))
        self.register_buffer("projection_matrix", gaussian_orthogonal_random_matrix(self.nb_features, dim_heads))

    def redraw_projection_matrix(self, device=None):
        fresh = gaussian_orthogonal_random_matrix(self.nb_features, self.dim_heads)
        self.projection_matrix.copy_(fresh.to(self.projection_matrix))


class PerformerAttention(nn.Module):
    def __init__(self, dim, causal=False, heads=8, dim_head=64, local_heads=0, local_window_size=256,
                 nb_features=None, feature_redraw_interval=1000, generalized_attention=False, kernel_fn=None,
                 dropout=0., no_projection=False, qkv_bias=False, attn_out_bias=True, *, value="v", mode="clean",
                 backend="auto"):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"PerformerAttention: dim {dim} must be divisible by heads {heads}")
        unsupported = {"causal=True": causal, "local_heads > 0": local_heads > 0, "no_projection=True": no_projection,
                       "kernel_fn other than nn.ReLU()": generalized_attention and kernel_fn is not None
                       and not isinstance(kernel_fn, nn.ReLU)}
        for what, present in unsupported.items():
            if present:
                raise NotImplementedError(f"PerformerAttention (armour_kernels): {what} is not supported by the "
                                          "fused op; use performer_pytorch.SelfAttention")
        if value not in ("v", "q"):
            raise ValueError(f"PerformerAttention: value must be 'v' or 'q', got {value!r}")
        dim_head = dim_head if dim_head is not None else dim // heads
        inner_dim = dim_head * heads
        self.heads, self.dim_head = heads, dim_head
        self.kernel = "relu" if generalized_attention else "softmax"
        self.value, self.mode, self.backend = value, mode, backend
        self.feature_redraw_interval = feature_redraw_interval  # accepted for parity; features are fixed
        self.fast_attention = RandomFeatures(dim_head, nb_features)
        self.to_q = nn.Linear(dim, inner_dim, bias=qkv_bias)
        self.to_k = nn.Linear(dim, inner_dim, bias=qkv_bias)
        if value == "v":
            self.to_v = nn.Linear(dim, inner_dim, bias=qkv_bias)
        self.to_out = nn.Linear(inner_dim, dim, bias=attn_out_bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, pos_emb=None, context=None, mask=None, context_mask=None, **kwargs):
        for name, given in (("pos_emb", pos_emb), ("context", context), ("mask", mask), ("context_mask", context_mask)):
            if given is not None:
                raise NotImplementedError(f"PerformerAttention (armour_kernels): {name} is not supported")
        b, n, _ = x.shape
        shape = (b, n, self.heads, self.dim_head)
        q, k = self.to_q(x).view(shape), self.to_k(x).view(shape)
        v = self.to_v(x).view(shape) if self.value == "v" else None
        out = performer_attention(q, k, v, projection=self.fast_attention.projection_matrix, kernel=self.kernel,
                                  mode=self.mode, value=self.value, backend=self.backend)
        return self.dropout(self.to_out(out.reshape(b, n, -1)))
