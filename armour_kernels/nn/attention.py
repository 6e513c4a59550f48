"""DeiT attention blocks on the fused op: one packed projection, the kernel reads q/k/v in place.

`FusedDeiTAttention(variant=...)` covers every attention of docs/attention.md with the parameter names
and state-dict keys of timm's `Attention` / python_ref's DeiT `Attention` (`qkv`, `proj`):

    regular            qkv = Linear(C, 3C) → [q | k | v]   softmax(s·qkᵀ)·v
    armour             qkv = Linear(C, 2C) → [q | k]       softmax(s·qkᵀ)·q   (no V at all)
    shared_kv          qkv = Linear(C, 2C) → [q | k]       softmax(s·qkᵀ)·k
    shared_qk          qkv = Linear(C, 2C) → [q | v]       softmax(s·qqᵀ)·v
    shared_qk_nodiag   as shared_qk, the diagonal score excluded

q, k and v are strided views of the projection output (B, N, n, H, D): nothing is copied
between the projection GEMM and the attention kernel, and the kernel writes (B, N, H, D)
contiguous, which is already the (B, N, C) input of `proj`. Both projections go through
`armour_kernels.ops.linear_act` (on CPU in inference: oneDNN, ~2x ATen's fp32 GEMM on AMD CPUs).

`forward(x, attn_mask=None, is_causal=False)` is timm's `Attention.forward`: the masks become the
op's dense bias (nn/masks.py). Under `torch.jit.script` the module runs its scripted branch (the
projections as ATen Linear, the attention op through the dispatcher: nn/_scripted.py); under
torch.fx it is a leaf (nn/_fx.py).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..constants import DEIT_VARIANTS  # variant → (value source, key is query, mask diagonal)
from ..ops.attention import attention
from ..ops.linear_act import linear_act
from ._fx import eager_forward
from ._packed import packed_of
from ._scripted import attention_op
from .adopt import adopt
from .masks import mask_bias


class FusedDeiTAttention(nn.Module):
    """DeiT multi-head self-attention (any variant) on `armour_kernels.attention`."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, variant: str = "regular", head_dim: int | None = None,
                 backend: str = "auto"):
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
            head_dim = dim // num_heads
        projections = 3 if variant == "regular" else 2
        self._configure(num_heads, head_dim, head_dim ** -0.5, variant, backend)
        self.qkv = nn.Linear(dim, projections * num_heads * head_dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(num_heads * head_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _configure(self, num_heads, head_dim, scale, variant, backend):
        if variant not in DEIT_VARIANTS:
            raise ValueError(f"unknown attention variant {variant!r}; expected one of {tuple(DEIT_VARIANTS)}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = float(scale)
        self.variant = variant
        self.backend = backend
        # The variant as plain attributes, for the scripted forward (TorchScript reads no dict of tuples).
        self.value, self.key_is_query, self.mask_diagonal = DEIT_VARIANTS[variant]
        self.projections = 3 if variant == "regular" else 2

    @classmethod
    def from_module(cls, original: nn.Module, *, variant: str = "regular", backend: str = "auto"):
        """A fused module that adopts `original` (timm `Attention`, python_ref DeiT `Attention`): its
        submodules, Parameters and state-dict keys (nn/adopt.py); num_heads, head_dim and scale from it."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        adopt(module, original, backend)
        module._configure(original.num_heads, original.head_dim, original.scale, variant, backend)
        projections = 3 if variant == "regular" else 2
        if module.qkv.out_features != projections * module.num_heads * module.head_dim:
            raise ValueError(f"{variant}: qkv has {module.qkv.out_features} outputs, expected "
                             f"{projections} × {module.num_heads} heads × {module.head_dim}")
        return module

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        """timm's `Attention.forward`: attn_mask bool (True = take part) or additive float,
        broadcastable to (B, H, N, N); is_causal as SDPA's."""
        if torch.jit.is_scripting():
            return self._scripted_forward(x, attn_mask, is_causal)
        return self._eager_forward(x, attn_mask, is_causal)

    @eager_forward
    def _eager_forward(self, x: Tensor, attn_mask: Optional[Tensor], is_causal: bool) -> Tensor:
        return self.proj_drop(self._attend(x, attn_mask, is_causal))

    @torch.jit.unused
    def residual_forward(self, x: Tensor, norm: tuple, attn_mask: Optional[Tensor] = None,
                         is_causal: bool = False) -> Tensor:
        """x + self(LayerNorm(x)) in eval mode (no dropout), norm = (weight, bias, eps): the norm runs as
        the qkv projection's prologue and the add as the output projection's epilogue (nn/block.py)."""
        if self.training:
            raise RuntimeError("FusedDeiTAttention.residual_forward is for inference (eval mode)")
        return self._attend(x, attn_mask, is_causal, norm=norm, residual=x)

    @torch.jit.unused
    def _attend(self, x: Tensor, attn_mask: Optional[Tensor], is_causal: bool, norm: Optional[tuple] = None,
                residual: Optional[Tensor] = None) -> Tensor:
        """proj(attention(qkv(norm(x)))) + residual, before the output dropout."""
        self._check_dropout()
        q, k, v = self._split(linear_act(x, self.qkv.weight, self.qkv.bias, backend=self.backend,
                                         packed=packed_of(self.qkv), norm=norm))
        bias = mask_bias(attn_mask, is_causal, q, k, "FusedDeiTAttention")
        out = attention(q, k, v, value=self.value, scale=self.scale, bias=bias, mask_diagonal=self.mask_diagonal,
                        backend=self.backend)
        return linear_act(out.flatten(2), self.proj.weight, self.proj.bias, backend=self.backend,
                          packed=packed_of(self.proj), residual=residual)

    @torch.jit.unused
    def dense_layers(self) -> List[nn.Module]:
        """The Linears whose weights this module hands to linear_act (what a served model packs)."""
        return [self.qkv, self.proj]

    def _scripted_forward(self, x: Tensor, attn_mask: Optional[Tensor], is_causal: bool) -> Tensor:
        """The same under TorchScript: the projections as ATen Linear, the op through the dispatcher."""
        self._check_dropout()
        q, k, v = self._split(self.qkv(x))
        bias = mask_bias(attn_mask, is_causal, q, k, "FusedDeiTAttention")
        out = attention_op(q, k, v, bias, None, self.value, self.scale, self.mask_diagonal, self.backend)
        return self.proj_drop(self.proj(out.flatten(2)))

    def _check_dropout(self):
        if hasattr(self.attn_drop, "p"):  # TorchScript evaluates hasattr when it compiles
            if self.training and self.attn_drop.p > 0:
                raise NotImplementedError("FusedDeiTAttention: the fused kernel has no attention dropout; "
                                          "set attn_drop to 0 (DeiT's default) or use eval mode")

    def _split(self, packed: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """q, k, v (v None when the value is not v) as views of the packed projection (B, N, n·H·D)."""
        parts = packed.unflatten(-1, (self.projections, self.num_heads, self.head_dim))
        first, second = parts[:, :, 0], parts[:, :, 1]
        v: Optional[Tensor] = None
        if self.projections == 3:
            return first, second, parts[:, :, 2]
        if self.key_is_query:
            return first, first, second
        return first, second, v

    def extra_repr(self):
        return f"variant={self.variant!r}, num_heads={self.num_heads}, head_dim={self.head_dim}, backend={self.backend!r}"


class ArmourAttention(FusedDeiTAttention):
    """Armour attention (docs/attention.md): qkv = Linear(C, 2C) → softmax(s·qkᵀ)·q → proj."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, head_dim: int | None = None, backend: str = "auto"):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, variant="armour", head_dim=head_dim,
                         backend=backend)


__all__ = ["FusedDeiTAttention", "ArmourAttention", "DEIT_VARIANTS"]
