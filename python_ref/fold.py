"""Exact BatchNorm folding for the python_ref LeViT models (docs/levit.md).

In eval mode a BatchNorm is the affine map y = (x − μ)·s + β with s = γ/√(σ² + ε), so
    Linear_BN / Conv2d_BN:  w' = w·s (per output channel),    b' = β − μ·s
    BN_Linear (the heads):  w' = w·s (per input feature),     b' = b + w·(β − μ·s)
The folded layers are plain nn.Linear / nn.Conv2d with a bias; the arithmetic runs in float64
and is cast back, so the folded model's output equals the unfolded one to fp32 rounding.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .levit import BNLinear, ConvBN, LinearBN


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm):
    """(s, t) in float64 such that bn(x) = x·s + t in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm needs BatchNorm layers that track running statistics")
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


@torch.no_grad()
def _fold_linear_bn(m: LinearBN) -> nn.Linear:
    scale, shift = _bn_affine(m.bn)
    w = m.linear.weight
    folded = nn.Linear(w.shape[1], w.shape[0], bias=True, device=w.device, dtype=w.dtype)
    folded.weight.copy_(w.double() * scale[:, None])
    folded.bias.copy_(shift)
    return folded


@torch.no_grad()
def _fold_conv_bn(m: ConvBN) -> nn.Conv2d:
    scale, shift = _bn_affine(m.bn)
    conv = m.linear
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight.copy_(conv.weight.double() * scale[:, None, None, None])
    folded.bias.copy_(shift)
    return folded


@torch.no_grad()
def _fold_bn_linear(m: BNLinear) -> nn.Linear:
    scale, shift = _bn_affine(m.bn)
    lin = m.linear
    w = lin.weight.double()
    folded = nn.Linear(lin.in_features, lin.out_features, bias=True, device=lin.weight.device,
                       dtype=lin.weight.dtype)
    folded.weight.copy_(w * scale[None, :])
    bias = w @ shift
    if lin.bias is not None:
        bias = bias + lin.bias.double()
    folded.bias.copy_(bias)
    return folded


FOLDERS = {LinearBN: _fold_linear_bn, ConvBN: _fold_conv_bn, BNLinear: _fold_bn_linear}


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with every Linear_BN, Conv2d_BN and BN_Linear folded.

    The input model is left untouched. Folding uses the BatchNorm running statistics, so the
    model must be in eval mode (its output then does not change); a model with nothing left to
    fold (already folded) comes back as an unchanged copy.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm expects an nn.Module, got {type(model).__name__}")
    if model.training:
        raise RuntimeError("fold_batchnorm folds the BatchNorm running statistics, which only an eval-mode "
                           "model uses: call model.eval() first")
    folded = copy.deepcopy(model)
    if type(folded) in FOLDERS:
        return FOLDERS[type(folded)](folded).eval()
    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            folder = FOLDERS.get(type(child))
            if folder is not None:
                setattr(parent, name, folder(child).eval())
    return folded.eval()
