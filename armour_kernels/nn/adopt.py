"""How a fused module takes over the module it replaces (the surgery contract).

The fused module gets the original's children, Parameters and buffers under the same names (the
same objects: no copies), so state-dict keys match, a checkpoint loads into either, and training
after `armour_kernels.patch` shows in the original after `unpatch`. `Adopted` is the base class
of the fused modules that are built this way.
"""
from __future__ import annotations

import torch.nn as nn

from .._backend import BACKENDS


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def adopt(fused: nn.Module, original: nn.Module, backend: str) -> None:
    """Give `fused` the children, Parameters and buffers of `original`, its training mode, and `backend`."""
    check_backend(backend)
    for name, child in original.named_children():
        fused.add_module(name, child)
    for name, param in original.named_parameters(recurse=False):
        fused.register_parameter(name, param)
    for name, buf in original.named_buffers(recurse=False):
        fused.register_buffer(name, buf, persistent=name not in original._non_persistent_buffers_set)
    fused.backend = backend
    fused.train(original.training)


class Adopted(nn.Module):
    """Base of the fused modules built from an original: adopts it (see `adopt`) and shows `backend`."""

    def __init__(self, original: nn.Module, backend: str = "auto"):
        super().__init__()
        adopt(self, original, backend)

    def extra_repr(self):
        return f"backend={self.backend!r}"
