"""Surgery converters for LeViT: timm `levit_*` / `levit_conv_*` and python_ref LeViT (all variants).

Six module types are swapped for fused ones: the residual blocks (whose adds move into the last
GEMM of each branch), the attention core, the subsample attention and the MLP
(armour_kernels.nn.levit), and the convolution stem (armour_kernels.nn.levit_stem).
"""
from __future__ import annotations

from ..nn.levit import LevitAttention, LevitAttentionDownsample, LevitBlock, LevitDownsampleBlock, LevitMlp
from ..nn.levit_stem import LevitStem
from . import CONVERTERS

# Original class name (timm and python_ref use the same names) → the fused module that replaces it.
_FUSED = {"Attention": LevitAttention, "AttentionDownsample": LevitAttentionDownsample, "LevitMlp": LevitMlp,
          "Stem16": LevitStem, "LevitBlock": LevitBlock, "LevitDownsample": LevitDownsampleBlock}

_MODULES = ("timm.models.levit", "python_ref.levit")
for _name, _fused in _FUSED.items():
    CONVERTERS.add(tuple(f"{module}:{_name}" for module in _MODULES), _fused)

# The regular LeViT attention classes (armourize rewrites these too; the subsample attention it leaves).
ATTENTIONS = tuple(f"{module}:Attention" for module in _MODULES)
