"""Model surgery: every rewrite of a model happens in this package.

- `patch` / `unpatch` (here): swap fused modules into timm and python_ref models, in place, and back;
- `armourize` (armourize.py): a regular DeiT / LeViT → its Armour form, a new model to fine-tune;
- `fold_batchnorm` (fold.py): LeViT's BatchNorms folded into their projections, in place;
- the serving rewrites `optimize` and `export_package` add for frozen inference (serving.py).

Modules are recognised by their exact class (match.py: a class named "package.module:Class" is
resolved to the class itself), never by a bare class name, which another class may share. For
`patch`, each family file (deit.py, levit.py, vix.py) registers its converters in one table
(`CONVERTERS.register("package.module:Class", ...)`, surgery/match.py): a function
`(module, backend) -> fused module` for each exact class it replaces. A fused module adopts the
Parameter objects of the module it replaces and has the same state-dict keys (nn/adopt.py), so a
checkpoint loads into either, and training after `patch` shows in `unpatch`'s result.
"""
from __future__ import annotations

import importlib

import torch.nn as nn

from ..backend import check
from .match import ClassTable

# Family modules whose converters `patch` uses.
FAMILY_MODULES = ("deit", "levit", "vix")

CONVERTERS = ClassTable()
_ORIGINAL = "_armour_original"


def _load_families():
    for name in FAMILY_MODULES:
        importlib.import_module(f"{__name__}.{name}")


def _convert(module: nn.Module, backend: str):
    converter = CONVERTERS.get(module)
    if converter is None:
        return None
    fused = converter(module, backend)
    fused.__dict__[_ORIGINAL] = module  # not a submodule: no duplicate parameters
    return fused


def _original(module: nn.Module):
    return module.__dict__.get(_ORIGINAL)


def _restore(fused: nn.Module) -> nn.Module:
    """The original of a fused module, with the fused module's current weights and training mode."""
    original = _original(fused)
    original.load_state_dict(fused.state_dict())
    return original.train(fused.training)


def _patch_children(parent: nn.Module, backend: str) -> int:
    """Convert the children of `parent`, then recurse into what is there now: a fused block's
    children (adopted from the original) are patched inside the fused block itself. An already
    fused child is rebuilt from its original when `backend` differs from the one it runs."""
    replaced = 0
    for name, child in list(parent.named_children()):
        if _original(child) is not None and child.backend != backend:
            child = _restore(child)
        if _original(child) is None:
            fused = _convert(child, backend)
            if fused is not None:
                setattr(parent, name, fused)
                child, replaced = fused, replaced + 1
        replaced += _patch_children(child, backend)
    return replaced


def _check_model(fn: str, model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"armour_kernels.{fn}: model must be a torch.nn.Module, got {type(model).__name__}")


def patch(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every supported attention / block module of `model` by its fused form, in place.

    Returns the model. Patching a patched model again applies the new `backend`. Raises if nothing
    in it could be patched, so a model the surgery does not know is never silently left on the
    slow path.
    """
    _check_model("patch", model)
    check(backend)
    _load_families()
    replaced = _patch_children(model, backend)
    already = any(_original(m) is not None for m in model.modules())
    if replaced == 0 and not already:
        raise TypeError(f"armour_kernels.patch: found no module it can fuse in {type(model).__name__}")
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `patch`: put the original modules back, carrying over the current weights and buffers."""
    _check_model("unpatch", model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _original(child) is not None:
                setattr(parent, name, _restore(child))
    return model
