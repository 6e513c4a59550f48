"""torch.fx: the fused modules are leaves of a symbolic trace, so the traced graph calls them (and
their kernels) as modules instead of tracing into Python that checks its inputs.

Two ways, both wanted:
- timm's registry (`timm.layers.register_notrace_module`): timm's feature extraction and its tests
  pass `get_notrace_modules()` to the tracer as leaf modules. `register_leaves` adds the fused
  classes when timm is installed (armour_kernels.nn does it at import).
- Any other tracer (plain `torch.fx.symbolic_trace`, torchvision's `create_feature_extractor`
  without timm's leaf list) calls the module's forward with Proxies: `as_leaf` then records the
  call as one `call_module` node, exactly what the tracer does for a leaf.
"""
from __future__ import annotations

import functools

import torch
import torch.fx
import torch.nn as nn

LEAF_MODULES: list[type] = []  # the fused classes, in registration order (FX_LEAF_MODULES in armour_kernels.nn)


def register_leaves(*classes: type) -> None:
    """Make `classes` fx leaves here and, when timm is installed, in timm's notrace registry."""
    LEAF_MODULES.extend(cls for cls in classes if cls not in LEAF_MODULES)
    try:
        from timm.layers import register_notrace_module
    except ImportError:  # timm is optional; `as_leaf` still keeps the modules whole
        return
    for cls in classes:
        register_notrace_module(cls)


def as_leaf(module: nn.Module, args: tuple, kwargs: dict):
    """When a tracer traces into `module` (some input is an fx Proxy): the `call_module` node a leaf
    gets, as a Proxy; otherwise None (a real call: run the module)."""
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, torch.fx.Proxy):
            tracer = arg.tracer
            return tracer.create_proxy("call_module", tracer.path_of_module(module), args, kwargs)
    return None


def eager_forward(method):
    """Decorates a fused module's Python forward (its arguments in `forward`'s order): TorchScript
    skips it (`torch.jit.unused`: the module's scripted branch runs instead), and a tracer that
    reaches it gets the module's leaf node (`as_leaf`) instead of tracing into it."""
    @functools.wraps(method)
    def run(self, *args):
        traced = as_leaf(self, args, {})
        return traced if traced is not None else method(self, *args)
    return torch.jit.unused(run)


__all__ = ["register_leaves", "as_leaf", "eager_forward", "LEAF_MODULES"]
