"""armour_kernels: fused attention kernels for vision transformers (Armour, LeViT, Nyström, Performer).

The public API lives here: the functional ops, model surgery, the backend policy. Submodules
`nn` (the fused modules), `cpu` and `triton` (the backends), `surgery` (every model rewrite),
`deploy` (optimize), `export` (AOTInductor packages, ONNX) and `timm` (the Armour model names for
timm.create_model) are reachable as attributes, imported on first use.
README.md has the map of the package; docs/ the maths, layouts and numerics.
"""
from __future__ import annotations

import importlib

from .backend import BACKENDS, backends, use_backend
from .ops.attention import armour_attention, attention
from .ops.linear_act import dense, dense_pack, image_conv, linear_act, linear_hardswish, patch_rows
from .ops.nystrom import nystrom_attention
from .ops.performer import performer_attention
from .surgery import patch, unpatch
from .surgery.fold import fold_batchnorm

__version__ = "0.1.0"

# Imported on first access: `triton` and `timm` pull in large packages, and the model-level
# submodules (nn, armourize) the python_ref model definitions, which the kernels never need.
_LAZY_SUBMODULES = ("nn", "cpu", "triton", "export", "timm", "ops", "constants", "surgery", "deploy", "plan")
_LAZY_FUNCTIONS = {"armourize": "surgery.armourize", "optimize": "deploy", "export_package": "export",
                   "load_package": "export", "explain": "plan"}


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES) | set(_LAZY_FUNCTIONS))


__all__ = ["__version__", "BACKENDS", "backends", "use_backend", "attention", "armour_attention",
           "nystrom_attention", "performer_attention", "linear_act", "linear_hardswish", "dense", "dense_pack", "image_conv", "patch_rows",
           "patch", "unpatch",
           "fold_batchnorm", "armourize", "optimize", "export_package", "load_package", "explain"]
