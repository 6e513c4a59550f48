"""Vision Xformers surgery: python_ref.vix softmax `Attention`, `NystromAttention` and
`PerformerSelfAttention` → FusedViXAttention, nn.nystrom.NystromAttention, nn.performer.PerformerAttention.

Each fused module is built on the meta device (no memory, no draw from the global RNG) with the
original's configuration, then takes over the original's submodules (projections, residual conv,
random-feature buffer holder, dropouts), so it shares their Parameters and buffers and has the
same state-dict keys. Linformer, FNet and Mixer layers have no fused kernel and are left alone.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..nn.adopt import adopt
from ..nn.nystrom import NystromAttention
from ..nn.performer import PerformerAttention
from ..nn.vix import FusedViXAttention
from . import CONVERTERS


def _dim_head(projection: nn.Linear, parts: int, heads: int) -> int:
    return projection.out_features // (parts * heads)


@CONVERTERS.register("python_ref.vix:Attention")
def _softmax(module: nn.Module, backend: str):
    dim_head = _dim_head(module.to_qkv, 2 if module.armour else 3, module.heads)
    with torch.device("meta"):
        fused = FusedViXAttention(module.to_qkv.in_features, module.heads, dim_head, rope=module.rope,
                                  armour=module.armour, backend=backend)
    return adopt(fused, module, backend)


@CONVERTERS.register("python_ref.vix:NystromAttention")
def _nystrom(module: nn.Module, backend: str):
    parts = 2 if module.armour else 3
    kernel = module.res_conv.kernel_size[0] if module.residual else 33
    with torch.device("meta"):
        fused = NystromAttention(module.to_qkv.in_features, _dim_head(module.to_qkv, parts, module.heads),
                                 module.heads, module.num_landmarks, module.pinv_iterations, module.residual, kernel,
                                 module.eps, value="q" if module.armour else "v", mode=module.mode, rope=module.rope,
                                 backend=backend)
    return adopt(fused, module, backend)


@CONVERTERS.register("python_ref.vix:PerformerSelfAttention")
def _performer(module: nn.Module, backend: str):
    features = module.fast_attention
    with torch.device("meta"):
        fused = PerformerAttention(module.to_q.in_features, heads=module.heads,
                                   dim_head=_dim_head(module.to_q, 1, module.heads), nb_features=features.nb_features,
                                   generalized_attention=features.generalized_attention,
                                   qkv_bias=module.to_q.bias is not None, attn_out_bias=module.to_out.bias is not None,
                                   value="q" if module.armour else "v", mode=features.mode, rope=module.rope,
                                   backend=backend)
    return adopt(fused, module, backend)
