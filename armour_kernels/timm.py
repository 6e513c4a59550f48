"""Register the Armour models with timm: `import armour_kernels.timm`, then `timm.create_model(name)`.

Names (each the python_ref model with that attention, patched onto the fused path):

    armour_deit_{tiny,small,base}_patch16_224, armour_deit_{tiny,small,base}_distilled_patch16_224
    armour_levit_{128s,128,192,256,384}, armour_plus_levit_{128s,128,192,256,384}

Keyword arguments work as for the timm / python_ref models (img_size, depth, num_classes, ...);
`backend=` ("auto", "triton", "cpu", "reference") picks the kernels. There are no trained
weights for these models: `pretrained=True` raises. To start from a trained regular model, load
the timm checkpoint into the regular model and call `armour_kernels.armourize` on it.
"""
from __future__ import annotations

import timm.models

import python_ref
from python_ref.deit import DEIT_CONFIGS
from python_ref.levit import LEVIT_CONFIGS

from .surgery import patch

# timm passes these to every entrypoint; they describe downloadable weights, which do not exist here.
_TIMM_WEIGHT_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")

MODEL_NAMES: dict[str, tuple[str, str]] = {}  # armour name → (python_ref base name, attention)
for _base in DEIT_CONFIGS:
    MODEL_NAMES[f"armour_{_base}"] = (_base, "armour")
for _base in LEVIT_CONFIGS:
    MODEL_NAMES[f"armour_{_base}"] = (_base, "armour")
    MODEL_NAMES[f"armour_plus_{_base}"] = (_base, "armour_plus")


def create_armour_model(name: str, pretrained: bool = False, backend: str = "auto", **kwargs):
    """Build Armour model `name` (one of MODEL_NAMES) on the fused path of `backend`."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown Armour model {name!r}; expected one of {tuple(MODEL_NAMES)}")
    if pretrained:
        raise ValueError(f"{name}: no pretrained Armour weights exist; create it with pretrained=False and "
                         "fine-tune, or armour_kernels.armourize(timm.create_model(<regular name>, "
                         "pretrained=True))")
    for key in _TIMM_WEIGHT_KWARGS:
        kwargs.pop(key, None)
    base, attention = MODEL_NAMES[name]
    return patch(python_ref.create_model(base, attention=attention, **kwargs), backend=backend)


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs):
        return create_armour_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name  # timm registers a function under its __name__
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{MODEL_NAMES[name][0]} with {MODEL_NAMES[name][1]} attention, fused (armour_kernels)."
    return entrypoint


__all__ = ["MODEL_NAMES", "create_armour_model"]
for _name in MODEL_NAMES:
    globals()[_name] = timm.models.register_model(_entrypoint(_name))
