"""DeiT surgery: timm's ViT `Attention` / python_ref's DeiT `Attention` → FusedDeiTAttention, and
timm's `Mlp` / python_ref's DeiT `Mlp` → FusedMlp.

The fused modules take over the original's own submodules (`qkv`, `proj`, `fc1`, `fc2`, dropouts),
so they share their Parameters and have the same state-dict keys.
"""
from __future__ import annotations

import torch.nn as nn

from python_ref.attention import DEIT_VARIANTS

from ..nn.attention import FusedDeiTAttention
from ..nn.mlp import FusedMlp
from . import register


def _timm_attention_class():
    try:
        from timm.layers.attention import Attention
    except ImportError:  # timm absent: nothing of timm's to recognise
        return None
    return Attention


def _from_timm(module, backend):
    """timm `Attention` (deit_* / vit_*): qkv = Linear(C, 3C) laid out [q | k | v], the regular variant."""
    unsupported = [name for name in ("q_norm", "k_norm", "norm")
                   if not isinstance(getattr(module, name, None), (nn.Identity, type(None)))]
    if getattr(module, "gate", None) is not None:
        unsupported.append("gate")
    if unsupported:
        raise ValueError(f"armour_kernels.patch: timm Attention with {', '.join(unsupported)} (not Identity) "
                         "is not supported by the fused DeiT attention")
    return FusedDeiTAttention.wrap(module.qkv, module.proj, module.attn_drop, module.proj_drop,
                                   num_heads=module.num_heads, head_dim=module.head_dim, scale=module.scale,
                                   variant="regular", backend=backend)


def _is_python_ref_attention(module) -> bool:
    """python_ref.deit.Attention, recognised by its attributes (the surgery contract)."""
    needed = ("num_heads", "head_dim", "scale", "variant", "qkv", "attn_drop", "proj", "proj_drop")
    return (all(hasattr(module, name) for name in needed) and isinstance(module.qkv, nn.Linear)
            and getattr(module, "variant", None) in DEIT_VARIANTS and not isinstance(module, FusedDeiTAttention))


@register
def convert_deit_attention(module: nn.Module, backend: str):
    timm_attention = _timm_attention_class()
    if timm_attention is not None and type(module) is timm_attention:
        return _from_timm(module, backend)
    if _is_python_ref_attention(module):
        return FusedDeiTAttention.wrap(module.qkv, module.proj, module.attn_drop, module.proj_drop,
                                       num_heads=module.num_heads, head_dim=module.head_dim, scale=module.scale,
                                       variant=module.variant, backend=backend)
    return None


def _mlp_classes():
    import python_ref.deit
    classes = [python_ref.deit.Mlp]
    try:
        from timm.layers.mlp import Mlp
    except ImportError:
        return classes
    return classes + [Mlp]


@register
def convert_mlp(module: nn.Module, backend: str):
    """timm `Mlp` and python_ref DeiT `Mlp`, matched by exact class (GluMlp, SwiGLU etc. are left alone)."""
    if type(module) in _mlp_classes():
        return FusedMlp(module, backend)
    return None
