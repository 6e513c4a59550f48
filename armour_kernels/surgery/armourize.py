"""`armourize`: turn a regular DeiT or LeViT (timm or python_ref) into its Armour form to fine-tune.

The conversion keeps the weights a pretrained model already has and drops the ones the Armour
form no longer needs (docs/attention.md, docs/levit.md):

- DeiT (`qkv = Linear(C, 3C)` laid out [q | k | v]): "armour" and "shared_kv" keep the W_Q and
  W_K rows (and biases) → Linear(C, 2C) [q | k]; "shared_qk" / "shared_qk_nodiag" keep W_Q and
  W_V → [q | v]. Armour then computes softmax(s·QKᵀ)·Q.
- LeViT (per-head interleaved `qkv = Linear_BN(C, h·(D + D + 2D))`): "armour" keeps per head
  the q rows, the k rows and the first half of the v rows ([q D, k D, v_half D]); "armour_plus"
  keeps q and k only. The BatchNorm's weight, bias and running statistics are sliced by the same
  rows (a folded projection's bias likewise). The subsample attention is left alone.

Every other module is deep-copied unchanged. The result is a new model (the input is not
touched) in the input's train/eval mode whose parameters are fresh leaf Parameters, with each
attention in its python_ref form, then — unless `backend=None` — patched onto the fused path
(`armour_kernels.patch(model, backend)`). `unpatch` of the result gives back the python_ref form.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from python_ref import deit as ref_deit
from python_ref import levit as ref_levit

from . import patch, unpatch
from .deit import ATTENTIONS as DEIT_ATTENTIONS
from .deit import unsupported_timm_options
from .levit import ATTENTIONS as LEVIT_ATTENTIONS
from .match import ClassTable

DEIT_TARGETS = ("armour", "shared_kv", "shared_qk", "shared_qk_nodiag")
LEVIT_TARGETS = ("armour", "armour_plus")
VARIANTS = tuple(dict.fromkeys(DEIT_TARGETS + LEVIT_TARGETS))


class Attention(ref_deit.Attention):
    """python_ref's DeiT attention that also takes timm's Block call `attn(x, attn_mask=..., is_causal=...)`.

    Used for converted timm models, whose blocks pass those keywords; masks are not supported.
    """

    def forward(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise NotImplementedError("armourized DeiT attention: attention masks are not supported")
        return super().forward(x)


# ----------------------------------------------------------------------------- row slicing

def _rows_linear(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    w = linear.weight
    new = nn.Linear(w.shape[1], rows.numel(), bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w.index_select(0, rows))
        if linear.bias is not None:
            new.bias.copy_(linear.bias.index_select(0, rows))
    new.weight.requires_grad_(w.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new.train(linear.training)


def _rows_batchnorm(bn: nn.BatchNorm1d, rows: torch.Tensor) -> nn.BatchNorm1d:
    ref = bn.weight if bn.weight is not None else bn.running_mean
    new = type(bn)(rows.numel(), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for name, tensor in list(bn.named_parameters(recurse=False)) + list(bn.named_buffers(recurse=False)):
            target = getattr(new, name)
            target.copy_(tensor if name == "num_batches_tracked" else tensor.index_select(0, rows))
    return new.train(bn.training)


def _slice_rows(module: nn.Module, rows: torch.Tensor) -> nn.Module:
    """A new copy of a projection keeping only output channels `rows`.

    Handles nn.Linear, BatchNorm1d, nn.Identity and containers of them (Linear_BN: `.linear` → `.bn`).
    """
    if isinstance(module, nn.Linear):
        return _rows_linear(module, rows)
    if isinstance(module, nn.BatchNorm1d):
        return _rows_batchnorm(module, rows)
    if isinstance(module, nn.Identity):
        return nn.Identity()
    children = dict(module.named_children())
    if not children or any(True for _ in module.parameters(recurse=False)):
        raise TypeError(f"armourize: cannot slice the output rows of a {type(module).__name__} projection")
    new = copy.copy(module)  # same class and attributes; children replaced below
    new._modules = {name: _slice_rows(child, rows) for name, child in children.items()}
    new._parameters, new._buffers = {}, {}
    return new


# ----------------------------------------------------------------------------- DeiT

def _armour_deit_attention(old: nn.Module, variant: str) -> nn.Module:
    if getattr(old, "variant", "regular") != "regular":
        raise ValueError(f"armourize: the model already has {old.variant!r} attention; start from a regular one")
    extras = unsupported_timm_options(old)
    if extras:
        raise TypeError(f"armourize: timm Attention with {extras} is not supported")
    heads, head_dim = old.num_heads, old.head_dim
    dim = old.qkv.in_features
    width = heads * head_dim
    if width != dim or old.qkv.out_features != 3 * dim:
        raise TypeError(f"armourize: DeiT attention needs qkv = Linear(C, 3C) with C = heads·head_dim, "
                        f"got {old.qkv} for {heads} heads × {head_dim}")
    keep = ([0, 1] if variant in ("armour", "shared_kv") else [0, 2])  # [q | k] or [q | v]
    rows = torch.cat([torch.arange(p * dim, (p + 1) * dim) for p in keep]).to(old.qkv.weight.device)
    new = Attention(dim, heads, qkv_bias=old.qkv.bias is not None, variant=variant)
    new.qkv = _slice_rows(old.qkv, rows)
    new.scale = float(old.scale)
    new.attn_drop, new.proj, new.proj_drop = old.attn_drop, old.proj, old.proj_drop
    return new.train(old.training)


# ----------------------------------------------------------------------------- LeViT

def _armour_levit_attention(old: nn.Module, variant: str) -> nn.Module:
    if getattr(old, "variant", "regular") != "regular":
        raise ValueError(f"armourize: the model already has {old.variant!r} attention; start from a regular one")
    if getattr(old, "use_conv", False):
        raise TypeError("armourize: LeViT in conv mode (timm levit_conv_*) is not supported; use the linear-mode "
                        "levit_* model")
    heads, D, val_dim = old.num_heads, old.key_dim, old.val_dim
    if variant == "armour_plus" and val_dim != 2 * D:
        raise ValueError(f"armourize: armour_plus needs value width 2·key_dim, got {val_dim} and {D}")
    per_head = 2 * D + val_dim
    kept = 2 * D + (val_dim - D if variant == "armour" else 0)  # q, k (and the first v rows)
    rows = torch.cat([torch.arange(h * per_head, h * per_head + kept) for h in range(heads)])
    weight = next(old.qkv.parameters())
    rows = rows.to(weight.device)
    resolution = int(round(old.attention_biases.shape[1] ** 0.5))
    new = ref_levit.Attention(weight.shape[1], D, heads, attn_ratio=val_dim / D, resolution=resolution,
                              act_layer=type(old.proj.act), variant=variant)
    new.qkv = _slice_rows(old.qkv, rows)
    new.proj = old.proj
    new.scale = float(old.scale)
    new.attention_biases = old.attention_biases
    new.attention_bias_idxs = old.attention_bias_idxs.clone()
    return new.train(old.training)


# ----------------------------------------------------------------------------- public

# The regular attentions armourize rewrites (exact classes, the ones patch fuses: surgery/match.py).
_ATTENTIONS = ClassTable()
_ATTENTIONS.add(DEIT_ATTENTIONS, "deit")
_ATTENTIONS.add(LEVIT_ATTENTIONS, "levit")


def _replace(model: nn.Module, family: str, build) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _ATTENTIONS.get(child) == family:
                setattr(parent, name, build(child))


def armourize(model: nn.Module, variant: str = "armour", *, backend: str | None = "auto") -> nn.Module:
    """A copy of the regular DeiT / LeViT `model` with its attention turned into `variant`.

    variant: DeiT "armour" (default), "shared_kv", "shared_qk", "shared_qk_nodiag"; LeViT "armour",
    "armour_plus". backend: the fused path to patch the result onto ("auto", "triton", "cpu",
    "reference"), or None to leave python_ref attention modules (patch later).
    Raises ValueError for an unknown variant, TypeError for a model it does not know.
    """
    if variant not in VARIANTS:
        raise ValueError(f"armourize: unknown variant {variant!r}; expected one of {VARIANTS}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"armourize: expected an nn.Module, got {type(model).__name__}")
    model = unpatch(copy.deepcopy(model))  # a fused input goes back to its plain modules first
    families = {_ATTENTIONS.get(m) for m in model.modules()}
    has_deit, has_levit = "deit" in families, "levit" in families
    if has_deit:
        if variant not in DEIT_TARGETS:
            raise ValueError(f"armourize: variant {variant!r} is for LeViT; DeiT supports {DEIT_TARGETS}")
        _replace(model, "deit", lambda m: _armour_deit_attention(m, variant))
    elif has_levit:
        if variant not in LEVIT_TARGETS:
            raise ValueError(f"armourize: variant {variant!r} is for DeiT; LeViT supports {LEVIT_TARGETS}")
        _replace(model, "levit", lambda m: _armour_levit_attention(m, variant))
    else:
        raise TypeError(f"armourize: {type(model).__name__} has no DeiT (timm / python_ref ViT Attention) or "
                        "LeViT attention to convert")
    if isinstance(getattr(model, "attention", None), str):
        model.attention = variant  # python_ref models record their attention name
    if backend is not None:
        patch(model, backend)
    return model


__all__ = ["armourize", "Attention", "DEIT_TARGETS", "LEVIT_TARGETS"]
