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

# The DeiT attention classes: timm's ViT attention, python_ref's, and armourize's subclass of
# python_ref's for timm models (surgery/armourize.py). armourize rewrites these too.
TIMM_ATTENTION = "timm.layers.attention:Attention"
REF_ATTENTIONS = ("python_ref.deit:Attention", "armour_kernels.surgery.armourize:Attention")
ATTENTIONS = (TIMM_ATTENTION, *REF_ATTENTIONS)


def unsupported_timm_options(module: nn.Module) -> list[str]:
    """The options of a timm `Attention` that neither the fused nor the Armour attention computes:
    q / k normalisation, a norm before the projection, a gate (empty when it is plain attention)."""
    unsupported = [name for name in ("q_norm", "k_norm", "norm")
                   if not isinstance(getattr(module, name, None), (nn.Identity, type(None)))]
    if getattr(module, "gate", None) is not None:
        unsupported.append("gate")
    return unsupported


@CONVERTERS.register(TIMM_ATTENTION)
def _timm_attention(module, backend):
    """timm `Attention` (deit_* / vit_*): qkv = Linear(C, 3C) laid out [q | k | v], the regular variant."""
    unsupported = unsupported_timm_options(module)
    if unsupported:
        raise ValueError(f"armour_kernels.patch: timm Attention with {', '.join(unsupported)} (not Identity) "
                         "is not supported by the fused DeiT attention")
    return FusedDeiTAttention.from_module(module, variant="regular", backend=backend)


@CONVERTERS.register(*REF_ATTENTIONS)
def _python_ref_attention(module, backend):
    """python_ref's DeiT attention in any variant (and armourize's subclass of it for timm models)."""
    return FusedDeiTAttention.from_module(module, variant=module.variant, backend=backend)


# GluMlp, SwiGLU etc. are other classes and are left alone.
CONVERTERS.add(("timm.layers.mlp:Mlp", "python_ref.deit:Mlp"), FusedMlp)
