"""DeiT surgery: timm's ViT `Attention` / python_ref's DeiT `Attention` → FusedDeiTAttention, and
timm's `Mlp` / python_ref's DeiT `Mlp` → FusedMlp.

The fused modules adopt the original's own submodules (`qkv`, `proj`, `fc1`, `fc2`, dropouts), so
they share their Parameters and have the same state-dict keys.
"""
from __future__ import annotations

import torch.nn as nn

from ..nn.attention import FusedDeiTAttention
from ..nn.linear_act import FusedMlp
from . import CONVERTERS


@CONVERTERS.register("timm.layers.attention:Attention")
def _timm_attention(module, backend):
    """timm `Attention` (deit_* / vit_*): qkv = Linear(C, 3C) laid out [q | k | v], the regular variant."""
    unsupported = [name for name in ("q_norm", "k_norm", "norm")
                   if not isinstance(getattr(module, name, None), (nn.Identity, type(None)))]
    if getattr(module, "gate", None) is not None:
        unsupported.append("gate")
    if unsupported:
        raise ValueError(f"armour_kernels.patch: timm Attention with {', '.join(unsupported)} (not Identity) "
                         "is not supported by the fused DeiT attention")
    return FusedDeiTAttention.from_module(module, variant="regular", backend=backend)


@CONVERTERS.register("python_ref.deit:Attention", "armour_kernels.convert:Attention")
def _python_ref_attention(module, backend):
    """python_ref's DeiT attention in any variant (and armourize's subclass of it for timm models)."""
    return FusedDeiTAttention.from_module(module, variant=module.variant, backend=backend)


# GluMlp, SwiGLU etc. are other classes and are left alone.
CONVERTERS.add(("timm.layers.mlp:Mlp", "python_ref.deit:Mlp"), FusedMlp)
