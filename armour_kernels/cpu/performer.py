"""CPU launchers of Performer (FAVOR+) attention (the contract in armour_kernels/ops/performer.py).

Forward: the fused C++ kernel (csrc/kernels/performer_kernel.h: key stabiliser pre-pass,
Σφ(k)vᵀ and Σφ(k) in one pass, output pass; φ(q), φ(k) never materialised), float32.
Backward: the fused C++ kernel (csrc/kernels/performer_backward_kernel.h) for relu features and
softmax features in mode "clean"; softmax in mode "seed" is NOT fused — recomputed through
python_ref.performer under autograd (exact; see armour_kernels/cpu/_linear_common.py).
"""
from __future__ import annotations

import torch

from . import _require
from ._linear_common import f32, recompute_grads


def performer_forward(q, k, v, projection, *, kernel, mode, value):
    """(out (B, Nq, H, Dv) in q's dtype, ctx (B·H, m, Dv), ksum (B·H, m), stab (B·H,)), fp32 reductions."""
    out, ctx, ksum, stab = _require().performer_attention(f32(q), f32(k), f32(v) if value == "v" else None,
                                                          projection, kernel, mode)
    return out.to(q.dtype), ctx, ksum, stab


def performer_backward(dout, q, k, v, projection, ctx, ksum, stab, *, kernel, mode, value):
    """(dq, dk, dv or None). Fused C++ kernel for relu features and softmax features in mode
    "clean" (detached key stabiliser); softmax in mode "seed" (a global stabiliser attached to
    autograd) is recomputed by autograd through python_ref instead — exact, not fused."""
    if kernel == "relu" or mode == "clean":
        dq, dk, dv = _require().performer_attention_backward(
            f32(dout), f32(q), f32(k), f32(v) if value == "v" else None, projection, ctx, ksum, stab, kernel, mode)
        return dq.to(q.dtype), dk.to(k.dtype), None if dv is None else dv.to(v.dtype)
    from python_ref.performer import performer_attention as reference

    proj = projection.detach().to(torch.promote_types(dout.dtype, torch.float32))

    def run(q, k, v):
        return reference(q, k, v, projection=proj, kernel=kernel, mode=mode, value=value)

    dq, dk, dv = recompute_grads(run, dout, (q, k, v if value == "v" else None))
    return dq, dk, dv
