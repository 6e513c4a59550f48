"""LeViT's convolution stem (four stride-2 3×3 Conv+BN with Hardswish between) with a fused CPU path.

In a fused LeViT-128S on CPU the stem was the largest single cost (118 ms of ~270 ms per batch of
64, fp32, 2 threads): ATen's convolutions on NCHW, a separate out-of-place Hardswish after each,
and a 51 MB first activation that glibc maps fresh (page faults) on every call. Folded, in
inference on CPU, `LevitStem` runs the chain on oneDNN in channels-last with each Hardswish as a
post-op, a few images at a time (armour_kernels.ops.linear_act.conv_chain): 25 ms for the same batch.

The module adopts the original's children (conv1, act1, …, conv4; the same Parameters and
state-dict keys) and otherwise runs them in order, as the original does — also under
`torch.jit.script`. Under torch.fx it is a leaf (nn/_fx.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..ops.linear_act import activation_of, conv_chain
from ._fx import eager_forward
from .adopt import Adopted


def _folded_conv(module: nn.Module):
    """(weight, bias, stride, padding) of a plain Conv2d or a BN-folded conv pair (`.linear` Conv2d,
    `.bn` Identity) that oneDNN can run as is (groups 1, dilation 1, zero padding as numbers), else None."""
    conv = module
    if not isinstance(module, nn.Conv2d):
        conv, bn = getattr(module, "linear", None), getattr(module, "bn", None)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.Identity):
            return None
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    return conv.weight, conv.bias, conv.stride, conv.padding


class LevitStem(Adopted):
    """Conv pairs and activations run in order; folded + CPU inference: one fused oneDNN chain."""

    def __init__(self, original: nn.Module, backend: str = "auto"):
        super().__init__(original, backend)
        self.stride = getattr(original, "stride", 16)
        self.chunk_batches = True  # compiled: image chunks for a static batch (surgery/serving.py static_batch_chunks)

    @torch.jit.unused
    def _layers(self):
        """[(weight, bias, stride, padding, activation)] when every conv is folded and every activation
        fusable and follows a conv; None otherwise (the children then run one by one)."""
        layers = []
        for child in self.children():
            conv = _folded_conv(child)
            if conv is not None:
                layers.append([*conv, "none"])
                continue
            act = activation_of(child)
            if act is None or not layers or layers[-1][-1] != "none":
                return None
            layers[-1][-1] = act
        return layers or None

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._modules_forward(x)
        return self._eager_forward(x)

    @eager_forward
    def _eager_forward(self, x: Tensor) -> Tensor:
        layers = None if self.training else self._layers()
        if layers is not None:
            return conv_chain(x, layers, backend=self.backend, chunk_batches=self.chunk_batches)
        return self._modules_forward(x)

    def _modules_forward(self, x: Tensor) -> Tensor:
        for child in self.children():
            x = child(x)
        return x
