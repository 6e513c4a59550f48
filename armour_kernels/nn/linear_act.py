"""Transformer MLP (fc1 → activation → fc2) on the Linear + activation ops.

`FusedMlp` replaces timm's `Mlp` (DeiT / ViT blocks) and python_ref's DeiT `Mlp`. It adopts the
original's submodules (same Parameters, same state-dict keys). When fc1 → act → fc2 is all there
is to compute (no norm between, no active dropout) it runs `armour_kernels.ops.linear_act.mlp`,
which on CPU in inference is oneDNN GEMMs with the activation as a post-op, in row chunks so the
4×-wide hidden activation never exists for the whole batch (docs/linear_act.md). Otherwise it
runs the original computation unchanged — which is also what it runs under `torch.jit.script`
(ATen's Linear and activation); under torch.fx it is a leaf (nn/_fx.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..ops.linear_act import activation_of, mlp
from ._fx import eager_forward
from ._packed import packed_of
from .adopt import Adopted


class FusedMlp(Adopted):
    """fc1 → act → drop1 → norm → fc2 → drop2 (timm `Mlp` semantics; python_ref's has no `norm`)."""

    def __init__(self, original: nn.Module, backend: str = "auto"):
        super().__init__(original, backend)
        if not hasattr(self, "norm"):
            self.norm = None
        self.chunk_batches = True  # compiled: row chunks for a static batch (surgery/serving.py static_batch_chunks)

    @torch.jit.unused
    def _fusable(self) -> str | None:
        """The activation name when fc1 → act → fc2 is all there is to compute, else None."""
        if not (isinstance(self.fc1, nn.Linear) and isinstance(self.fc2, nn.Linear)):
            return None
        if not isinstance(self.norm, (nn.Identity, type(None))):
            return None
        if self.training and any(getattr(d, "p", 0.0) > 0 for d in (self.drop1, self.drop2)):
            return None
        return activation_of(self.act)

    @torch.jit.unused
    def dense_layers(self) -> list:
        """The Linears whose weights this module hands to linear_act (what a served model packs)."""
        return [self.fc1, self.fc2]

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._modules_forward(x)
        return self._eager_forward(x)

    @eager_forward
    def _eager_forward(self, x: Tensor) -> Tensor:
        act = self._fusable()
        if act is not None:
            return mlp(x, (self.fc1.weight, self.fc1.bias), (self.fc2.weight, self.fc2.bias), act=act,
                       backend=self.backend, packed=(packed_of(self.fc1), packed_of(self.fc2)),
                       chunk_batches=self.chunk_batches)
        return self._modules_forward(x)

    @torch.jit.unused
    def residual_forward(self, x: Tensor, norm: tuple) -> Tensor:
        """x + self(LayerNorm(x)) in eval mode when the MLP is fusable, norm = (weight, bias, eps): the norm
        runs as fc1's prologue and the add as fc2's epilogue (nn/block.py)."""
        act = self._fusable()
        if act is None or self.training:
            raise RuntimeError("FusedMlp.residual_forward is for a fusable MLP in eval mode")
        return mlp(x, (self.fc1.weight, self.fc1.bias), (self.fc2.weight, self.fc2.bias), act=act,
                   backend=self.backend, packed=(packed_of(self.fc1), packed_of(self.fc2)),
                   chunk_batches=self.chunk_batches, norm=norm, residual=x)

    def _modules_forward(self, x: Tensor) -> Tensor:
        """The original computation, module by module."""
        h = self.drop1(self.act(self.fc1(x)))
        if self.norm is not None:
            h = self.norm(h)
        return self.drop2(self.fc2(h))


__all__ = ["FusedMlp"]
