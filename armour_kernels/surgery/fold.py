"""Fold LeViT's BatchNorms into the neighbouring Linear / Conv2d for inference (docs/levit.md).

LeViT pairs every projection with a BatchNorm: `Linear_BN` / `Conv2d_BN` (timm `LinearNorm`,
`ConvNorm`; python_ref `Linear_BN`) normalise *after* the projection, `BN_Linear` (timm
`NormLinear`, the classifier heads) *before* it. In eval mode a BatchNorm is the affine map
y = s·x + t with s = γ/√(σ²+ε), t = β − μ·s, so

    Linear_BN:  w' = s[:, None]·w,  b' = s·b + t          (b = 0 when the linear has no bias)
    BN_Linear:  w' = w·s[None, :],  b' = b + w·t

`fold_batchnorm` rewrites the model IN PLACE and returns it: the BatchNorm child becomes
`nn.Identity()` and the projection gets the folded weight and a bias. The module tree and the
projection's state-dict keys stay as they were (`qkv.linear.weight`, plus `qkv.linear.bias`),
so code that looks for `.linear` / `.bn` keeps working and folding again is a no-op.
The arithmetic is done in float64 and rounded once to the parameter dtype, so the eval output
agrees with the unfolded model to that dtype's rounding.

(python_ref.fold.fold_batchnorm, the reference, returns a folded *copy* with the pairs replaced by
plain nn.Linear / nn.Conv2d; the fused LeViT modules accept both forms.)

timm's own `fuse()` methods are not used: they build their replacement `nn.Linear` on the
default device and dtype (a CUDA or half model would come back half on the CPU in fp32).
"""
from __future__ import annotations

import torch
import torch.nn as nn

_PROJECTIONS = (nn.Linear, nn.Conv2d, nn.Conv1d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_FOLDED = "_armour_bn_folded"  # marks a pair whose BatchNorm this function replaced


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm):
    """(s, t) of the eval-mode BatchNorm y = s·x + t, in float64."""
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    s = torch.rsqrt(var + bn.eps)
    if bn.affine:
        s = s * bn.weight.double()
        t = bn.bias.double() - mean * s
    else:
        t = -mean * s
    return s, t


def _set_weight_and_bias(proj: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        proj.weight.copy_(weight.to(proj.weight.dtype))
        if proj.bias is None:
            proj.bias = nn.Parameter(bias.to(device=proj.weight.device, dtype=proj.weight.dtype),
                                     requires_grad=proj.weight.requires_grad)
        else:
            proj.bias.copy_(bias.to(proj.bias.dtype))


def _fold_norm_after(proj: nn.Module, bn: nn.Module) -> None:
    """Linear_BN / Conv2d_BN: the BatchNorm scales the projection's output channels."""
    if bn.num_features != proj.weight.shape[0]:
        raise ValueError(f"fold_batchnorm: {type(bn).__name__}({bn.num_features}) after a projection "
                         f"with {proj.weight.shape[0]} outputs")
    s, t = _bn_affine(bn)
    w = proj.weight.double()
    b = proj.bias.double() if proj.bias is not None else torch.zeros_like(s)
    shape = (-1,) + (1,) * (w.dim() - 1)
    _set_weight_and_bias(proj, w * s.view(shape), s * b + t)


def _fold_norm_before(bn: nn.Module, proj: nn.Module) -> None:
    """BN_Linear (the heads): the BatchNorm scales the projection's input features."""
    if not isinstance(proj, nn.Linear) or bn.num_features != proj.in_features:
        raise ValueError(f"fold_batchnorm: {type(bn).__name__}({bn.num_features}) before "
                         f"{type(proj).__name__} it cannot be folded into")
    s, t = _bn_affine(bn)
    w = proj.weight.double()
    b = proj.bias.double() if proj.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    _set_weight_and_bias(proj, w * s[None, :], b + w @ t)


def _norm_projection_pair(module: nn.Module):
    """(projection name, norm name, norm comes first) when `module` is a BN+projection pair, else None.

    A pair is a module with exactly one projection child and one BatchNorm child (and nothing
    else but Dropout / Identity). Which runs first is the order the children were registered in,
    which is the order every LeViT implementation (official, timm, python_ref) calls them in.
    """
    proj = norm = None
    order = []
    for name, child in module.named_children():
        if isinstance(child, _PROJECTIONS):
            if proj is not None:
                return None
            proj = name
            order.append(name)
        elif isinstance(child, _NORMS):
            if norm is not None:
                return None
            norm = name
            order.append(name)
        elif not isinstance(child, (nn.Dropout, nn.Identity)):
            return None
    if proj is None or norm is None:
        return None
    return proj, norm, order[0] == norm


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every LeViT BatchNorm of `model` into its projection, in place; returns `model`.

    Works on timm `levit_*` (linear mode), `levit_conv_*` (1×1-conv mode) and python_ref LeViT
    models, whatever their attention variant. The model must be in eval mode: a training-mode
    BatchNorm normalises with batch statistics, which no fixed weight reproduces. Folding a
    folded model changes nothing. A BatchNorm that is not paired with a projection is an error,
    and so is a model that has no BatchNorm to fold and never had one (like `patch`, it says so
    rather than silently doing nothing).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm: model must be a torch.nn.Module, got {type(model).__name__}")
    norms = [m for m in model.modules() if isinstance(m, _NORMS)]
    if not norms:
        if any(_FOLDED in m.__dict__ for m in model.modules()):
            return model
        raise TypeError(f"fold_batchnorm: found no BatchNorm to fold in {type(model).__name__}")
    if any(m.training for m in norms) or (norms and model.training):
        raise RuntimeError("fold_batchnorm: the model is in training mode; BatchNorm folding uses the "
                           "running statistics and is only exact for inference — call model.eval() first")
    folded = set()
    for module in model.modules():
        pair = _norm_projection_pair(module)
        if pair is None:
            continue
        proj_name, norm_name, norm_first = pair
        proj, bn = getattr(module, proj_name), getattr(module, norm_name)
        if norm_first:
            _fold_norm_before(bn, proj)
        else:
            _fold_norm_after(proj, bn)
        setattr(module, norm_name, nn.Identity())
        module.__dict__[_FOLDED] = True
        folded.add(id(bn))
    left = [type(m).__name__ for m in norms if id(m) not in folded]
    if left:
        raise ValueError(f"fold_batchnorm: {len(left)} BatchNorm layer(s) ({left[0]}, ...) are not next to a "
                         "projection this function knows how to fold them into")
    _clear_attention_bias_caches(model)
    return model


def _clear_attention_bias_caches(model: nn.Module) -> None:
    # timm's LeViT attention caches the gathered bias per device in eval mode; folding does not
    # touch the table, but a fresh cache keeps the folded model independent of its past.
    for m in model.modules():
        if isinstance(getattr(m, "attention_bias_cache", None), dict):
            m.attention_bias_cache = {}
