"""Vision Xformers surgery: python_ref.vix softmax `Attention`, `NystromAttention` and
`PerformerSelfAttention` → FusedViXAttention, nn.nystrom.NystromAttention, nn.performer.PerformerAttention.

Each fused module is built on the meta device (no memory, no draw from the global RNG) with the
original's configuration, then takes over the original's submodules (projections, residual conv,
random-feature buffer holder, dropouts), so it shares their Parameters and buffers and has the
same state-dict keys. Linformer, FNet and Mixer layers have no fused kernel and are left alone.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from python_ref import vix

from ..nn.nystrom import NystromAttention
from ..nn.performer import PerformerAttention
from ..nn.vix import FusedViXAttention
from . import register


def _adopt(fused: nn.Module, original: nn.Module, names) -> nn.Module:
    """Move the original's submodules `names` into `fused`; every tensor of `fused` must then be the original's."""
    for name in names:
        setattr(fused, name, getattr(original, name))
    ours = {id(t) for t in itertools.chain(original.parameters(), original.buffers())}
    foreign = [name for name, t in itertools.chain(fused.named_parameters(), fused.named_buffers())
               if id(t) not in ours]
    if foreign or list(fused.state_dict()) != list(original.state_dict()):
        raise RuntimeError(f"armour_kernels.patch: the fused {type(fused).__name__} does not share the state of "
                           f"{type(original).__name__} (own tensors: {foreign})")
    return fused.train(original.training)


def _dim_head(projection: nn.Linear, parts: int, heads: int) -> int:
    return projection.out_features // (parts * heads)


def _softmax(module: vix.Attention, backend: str):
    dim_head = _dim_head(module.to_qkv, 2 if module.armour else 3, module.heads)
    with torch.device("meta"):
        fused = FusedViXAttention(module.to_qkv.in_features, module.heads, dim_head, rope=module.rope,
                                  armour=module.armour, backend=backend)
    return _adopt(fused, module, ("to_qkv", "dropout", "to_out"))


def _nystrom(module: vix.NystromAttention, backend: str):
    parts = 2 if module.armour else 3
    kernel = module.res_conv.kernel_size[0] if module.residual else 33
    with torch.device("meta"):
        fused = NystromAttention(module.to_qkv.in_features, _dim_head(module.to_qkv, parts, module.heads),
                                 module.heads, module.num_landmarks, module.pinv_iterations, module.residual, kernel,
                                 module.eps, value="q" if module.armour else "v", mode=module.mode, rope=module.rope,
                                 backend=backend)
    return _adopt(fused, module, ("to_qkv", "to_out") + (("res_conv",) if module.residual else ()))


def _performer(module: vix.PerformerSelfAttention, backend: str):
    features = module.fast_attention
    with torch.device("meta"):
        fused = PerformerAttention(module.to_q.in_features, heads=module.heads,
                                   dim_head=_dim_head(module.to_q, 1, module.heads), nb_features=features.nb_features,
                                   generalized_attention=features.generalized_attention,
                                   qkv_bias=module.to_q.bias is not None, attn_out_bias=module.to_out.bias is not None,
                                   value="q" if module.armour else "v", mode=features.mode, rope=module.rope,
                                   backend=backend)
    names = ("fast_attention", "to_q", "to_k", "to_out", "dropout") + (() if module.armour else ("to_v",))
    return _adopt(fused, module, names)


# Exact types: a subclass may compute something else.
_CONVERTERS = {vix.Attention: _softmax, vix.NystromAttention: _nystrom, vix.PerformerSelfAttention: _performer}


@register
def convert_vix_attention(module: nn.Module, backend: str):
    converter = _CONVERTERS.get(type(module))
    return None if converter is None else converter(module, backend)
