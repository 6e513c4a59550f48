"""How a fused module takes over the module it replaces (the surgery contract): one idiom, `adopt`.

The fused module gets the original's children, Parameters and buffers under the same names (the
same objects: no copies), so state-dict keys match, a checkpoint loads into either, and training
after `armour_kernels.patch` shows in the original after `unpatch`. A fused module may be built
first with its own configuration (on the meta device, so nothing is allocated or drawn from the
RNG) and then adopt the original: whatever it built under the same names is replaced, and
`adopt` refuses a result that would keep a tensor of its own.
"""
from __future__ import annotations

import itertools

import torch.nn as nn

from ..backend import check


def adopt(fused: nn.Module, original: nn.Module, backend: str) -> nn.Module:
    """Give `fused` the children, Parameters and buffers of `original`, its training mode, and `backend`."""
    check(backend)
    for name, child in original.named_children():
        fused.add_module(name, child)
    for name, param in original.named_parameters(recurse=False):
        fused.register_parameter(name, param)
    for name, buf in original.named_buffers(recurse=False):
        fused.register_buffer(name, buf, persistent=name not in original._non_persistent_buffers_set)
    ours = {id(t) for t in itertools.chain(original.parameters(), original.buffers())}
    foreign = [name for name, t in itertools.chain(fused.named_parameters(), fused.named_buffers())
               if id(t) not in ours]
    if foreign or set(fused.state_dict()) != set(original.state_dict()):
        raise RuntimeError(f"armour_kernels: the fused {type(fused).__name__} does not share the state of "
                           f"{type(original).__name__} (tensors of its own: {foreign})")
    fused.backend = backend
    return fused.train(original.training)


class Adopted(nn.Module):
    """Base of the fused modules built from an original: adopts it (see `adopt`) and shows `backend`."""

    def __init__(self, original: nn.Module, backend: str = "auto"):
        super().__init__()
        adopt(self, original, backend)

    def extra_repr(self):
        return f"backend={self.backend!r}"
