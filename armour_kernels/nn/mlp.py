"""Transformer MLP (fc1 → activation → fc2) with a fused CPU inference path.

`FusedMlp` replaces timm's `Mlp` (DeiT / ViT blocks) and python_ref's DeiT `Mlp`. It adopts the
original's submodules (same Parameters, same state-dict keys). On CPU, when no gradient is
wanted, it runs `armour_kernels.cpu.dense.mlp`: oneDNN GEMMs with the activation as a post-op,
in row chunks so the 4×-wide hidden activation never exists for the whole batch (see
cpu/dense.py for the measurements). Everywhere else — training, GPU, an activation or norm oneDNN
cannot fuse — it runs the original computation unchanged.
"""
from __future__ import annotations

import torch.nn as nn

from ..cpu import dense
from .adopt import Adopted


class FusedMlp(Adopted):
    """fc1 → act → drop1 → norm → fc2 → drop2 (timm `Mlp` semantics; python_ref's has no `norm`)."""

    def __init__(self, original: nn.Module, backend: str = "auto"):
        super().__init__(original, backend)
        if not hasattr(self, "norm"):
            self.norm = None

    def _fusable(self) -> str | None:
        """The oneDNN post-op of `act` when fc1 → act → fc2 is all there is to compute, else None."""
        if not (isinstance(self.fc1, nn.Linear) and isinstance(self.fc2, nn.Linear)):
            return None
        if not isinstance(self.norm, (nn.Identity, type(None))):
            return None
        if self.training and any(getattr(d, "p", 0.0) > 0 for d in (self.drop1, self.drop2)):
            return None
        return dense.activation_of(self.act)

    def forward(self, x):
        act = self._fusable()
        if act is not None and dense.serves(self.backend, x, self.fc1.weight, self.fc2.weight):
            return dense.mlp(x, (self.fc1.weight, self.fc1.bias), act, (self.fc2.weight, self.fc2.bias))
        h = self.drop1(self.act(self.fc1(x)))
        if self.norm is not None:
            h = self.norm(h)
        return self.drop2(self.fc2(h))
