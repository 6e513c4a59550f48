"""`create_model(name, attention=..., **kwargs)`: the python_ref models by their timm names.

Keyword overrides work as in `timm.create_model` (img_size, patch_size, depth, num_classes,
embed_dim, num_heads, drop_rate, ...), e.g. to build a small test model.
"""
from __future__ import annotations

import torch.nn as nn

from .attention import DEIT_VARIANTS
from .deit import DEIT_CONFIGS, DeiT
from .levit import LEVIT_CONFIGS, LEVIT_VARIANTS, Levit
from .vix import VIX_ATTENTIONS, vix_cifar

# name → (builder, its default configuration, valid attention names, default attention)
_FAMILIES = {
    **{name: (DeiT, cfg, tuple(DEIT_VARIANTS), "regular") for name, cfg in DEIT_CONFIGS.items()},
    **{name: (Levit, cfg, tuple(LEVIT_VARIANTS), "regular") for name, cfg in LEVIT_CONFIGS.items()},
    "vix_cifar": (vix_cifar, {}, VIX_ATTENTIONS, "softmax"),
}

MODEL_NAMES = tuple(_FAMILIES)


def list_models() -> tuple[str, ...]:
    """The names `create_model` knows."""
    return MODEL_NAMES


def _lookup(name):
    if name not in _FAMILIES:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    return _FAMILIES[name]


def create_model(name: str, attention: str | None = None, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build python_ref model `name` with the given attention (default: regular / softmax).

    No weights are downloaded: `pretrained=True` is refused; load a timm state dict instead.
    """
    builder, config, choices, default = _lookup(name)
    if pretrained:
        raise ValueError("python_ref models have no pretrained weights; "
                         "load a timm state dict: model.load_state_dict(timm_model.state_dict())")
    attention = default if attention is None else attention
    if attention not in choices:
        raise ValueError(f"unknown attention {attention!r} for {name}; expected one of {choices}")
    return builder(**{**config, **kwargs}, attention=attention)
