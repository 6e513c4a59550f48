"""Surgery converters for LeViT: timm `levit_*` / `levit_conv_*` and python_ref LeViT (all variants).

Six module types are swapped for fused ones: the residual blocks (whose adds move into the last
GEMM of each branch), the attention core, the subsample attention and the MLP
(armour_kernels.nn.levit), and the convolution stem (armour_kernels.nn.levit_stem). Classes are matched exactly (not by duck typing), so
a DeiT or other model's `Attention` is never taken for LeViT's.
"""
from __future__ import annotations

import importlib

from ..nn.levit import LevitAttention, LevitAttentionDownsample, LevitBlock, LevitDownsampleBlock, LevitMlp
from ..nn.levit_stem import LevitStem
from . import register

# (module, class name) → fused module class. Modules that are not installed are skipped.
_KNOWN = {
    ("timm.models.levit", "Attention"): LevitAttention,
    ("timm.models.levit", "AttentionDownsample"): LevitAttentionDownsample,
    ("timm.models.levit", "LevitMlp"): LevitMlp,
    ("timm.models.levit", "Stem16"): LevitStem,
    ("timm.models.levit", "LevitBlock"): LevitBlock,
    ("timm.models.levit", "LevitDownsample"): LevitDownsampleBlock,
    ("python_ref.levit", "Attention"): LevitAttention,
    ("python_ref.levit", "AttentionDownsample"): LevitAttentionDownsample,
    ("python_ref.levit", "LevitMlp"): LevitMlp,
    ("python_ref.levit", "Stem16"): LevitStem,
    ("python_ref.levit", "LevitBlock"): LevitBlock,
    ("python_ref.levit", "LevitDownsample"): LevitDownsampleBlock,
}
_TABLE = None


def _table():
    global _TABLE
    if _TABLE is None:
        _TABLE = {}
        for (module_name, class_name), fused in _KNOWN.items():
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError):
                continue
            _TABLE[cls] = fused
    return _TABLE


@register
def convert_levit(module, backend):
    fused = _table().get(type(module))
    return None if fused is None else fused(module, backend)
