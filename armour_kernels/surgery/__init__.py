"""Model surgery: swap fused modules into timm and python_ref models, in place, and back.

Each family file (deit.py, levit.py, vix.py) registers a converter with `register`: a function
`(module, backend) -> fused module | None` that recognises one module type it can replace.
A fused module shares the Parameter objects of the module it replaces and has the same
state-dict keys, so a checkpoint loads into either, and training after `patch` shows in
`unpatch`'s result.
"""
from __future__ import annotations

import importlib

import torch.nn as nn

from .._backend import BACKENDS

# Family modules whose converters `patch` tries, in order.
FAMILY_MODULES = ("deit", "levit", "vix")

_CONVERTERS = []
_ORIGINAL = "_armour_original"


def register(converter):
    """Decorator: add a converter `(module, backend) -> nn.Module | None` to those `patch` tries."""
    _CONVERTERS.append(converter)
    return converter


def _load_families():
    for name in FAMILY_MODULES:
        importlib.import_module(f"{__name__}.{name}")


def _convert(module: nn.Module, backend: str):
    for converter in _CONVERTERS:
        fused = converter(module, backend)
        if fused is not None:
            fused.__dict__[_ORIGINAL] = module  # not a submodule: no duplicate parameters
            return fused
    return None


def _patch_children(parent: nn.Module, backend: str) -> int:
    """Convert the children of `parent`, then recurse into what is there now: a fused block's
    children (adopted from the original) are patched inside the fused block itself."""
    replaced = 0
    for name, child in list(parent.named_children()):
        if _ORIGINAL not in child.__dict__:  # not already fused
            fused = _convert(child, backend)
            if fused is not None:
                setattr(parent, name, fused)
                child, replaced = fused, replaced + 1
        replaced += _patch_children(child, backend)
    return replaced


def patch(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every supported attention / block module of `model` by its fused form, in place.

    Returns the model. Raises if nothing in it could be patched, so a model the surgery does
    not know is never silently left on the slow path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _load_families()
    replaced = _patch_children(model, backend)
    already = any(_ORIGINAL in m.__dict__ for m in model.modules())
    if replaced == 0 and not already:
        raise TypeError(f"armour_kernels.patch: found no module it can fuse in {type(model).__name__}")
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `patch`: put the original modules back, carrying over the current weights and buffers."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            original = child.__dict__.get(_ORIGINAL)
            if original is not None:
                original.load_state_dict(child.state_dict())
                original.train(child.training)
                setattr(parent, name, original)
    return model
