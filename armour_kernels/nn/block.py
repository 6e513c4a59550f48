"""A pre-norm transformer block (DeiT / ViT) served as dense-op calls (qkv, proj, the MLP as one) and one attention call.

    x = x + proj(attention(qkv(LayerNorm1(x))))
    x = x + fc2(act(fc1(LayerNorm2(x))))

`FusedBlock` replaces timm's ViT `Block` and python_ref's DeiT `Block` in a served model
(armour_kernels.optimize / export_package: surgery/serving.py `fuse_blocks`), after their
attention and MLP are fused. It adopts the original's submodules (same Parameters, same
state-dict keys). In eval mode each LayerNorm runs as the next projection's prologue (the dense op
normalises the rows it is about to read) and each residual add as the projection's epilogue, so a
block has no LayerNorm or add of its own: no pass over memory, no call, no buffer for them (under
torch.compile these were inductor's add + LayerNorm kernels between the GEMMs). Anything else — training,
layer scale, an MLP that cannot fuse — runs the original computation, which is also what
TorchScript runs; under torch.fx the block is a leaf (nn/_fx.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..ops.linear_act import layer_norm_args
from ._fx import eager_forward
from .adopt import Adopted
from .attention import FusedDeiTAttention
from .linear_act import FusedMlp


def fusable_norm(module: nn.Module) -> bool:
    """A LayerNorm over the last dim (timm's LayerNorm subclasses compute the same)."""
    return isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1


class FusedBlock(Adopted):
    """norm1 → attn → (ls1, drop_path1) + x, norm2 → mlp → (ls2, drop_path2) + x (timm `Block` semantics)."""

    def __init__(self, original: nn.Module, backend: str = "auto"):
        super().__init__(original, backend)
        for name in ("ls1", "ls2", "drop_path1", "drop_path2"):  # python_ref's block has no layer scale
            if not hasattr(self, name):
                setattr(self, name, nn.Identity())

    @torch.jit.unused
    def fusable(self) -> bool:
        """Whether the norms and residual adds can run inside the projections (eval, nothing between)."""
        if self.training or not (isinstance(self.attn, FusedDeiTAttention) and isinstance(self.mlp, FusedMlp)):
            return False
        if not (fusable_norm(self.norm1) and fusable_norm(self.norm2)) or self.mlp._fusable() is None:
            return False
        # In eval DropPath is the identity; a LayerScale is not.
        return isinstance(self.ls1, nn.Identity) and isinstance(self.ls2, nn.Identity)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        if torch.jit.is_scripting():
            return self._modules_forward(x, attn_mask, is_causal)
        return self._eager_forward(x, attn_mask, is_causal)

    @eager_forward
    def _eager_forward(self, x: Tensor, attn_mask: Optional[Tensor], is_causal: bool) -> Tensor:
        if self.fusable():
            x = self.attn.residual_forward(x, layer_norm_args(self.norm1), attn_mask, is_causal)
            return self.mlp.residual_forward(x, layer_norm_args(self.norm2))
        return self._modules_forward(x, attn_mask, is_causal)

    def _modules_forward(self, x: Tensor, attn_mask: Optional[Tensor], is_causal: bool) -> Tensor:
        """The original computation, module by module."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


__all__ = ["FusedBlock", "fusable_norm"]
