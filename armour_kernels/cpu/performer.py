"""CPU launchers of Performer (FAVOR+) attention (the contract in armour_kernels/ops/performer.py).

Forward: the fused C++ kernel (csrc/kernels/performer_kernel.h: key stabiliser pre-pass,
Σφ(k)vᵀ and Σφ(k) in one pass, output pass; φ(q), φ(k) never materialised), float32.
Backward: the fused C++ kernel (csrc/kernels/performer_backward_kernel.h), every kernel and mode.
"""
from __future__ import annotations

from . import _require
from ._linear_common import f32


def performer_forward(q, k, v, projection, *, kernel, mode, value):
    """(out (B, Nq, H, Dv) in q's dtype, ctx (B·H, m, Dv), ksum (B·H, m), stab (B·H,)), fp32 reductions."""
    out, ctx, ksum, stab = _require().performer_attention(f32(q), f32(k), f32(v) if value == "v" else None,
                                                          projection, kernel, mode)
    return out.to(q.dtype), ctx, ksum, stab


def performer_backward(dout, q, k, v, projection, ctx, ksum, stab, *, kernel, mode, value):
    """(dq, dk, dv or None) from the fused C++ backward (seed mode's attached stabiliser included)."""
    dq, dk, dv = _require().performer_attention_backward(
        f32(dout), f32(q), f32(k), f32(v) if value == "v" else None, projection, ctx, ksum, stab, kernel, mode)
    return dq.to(q.dtype), dk.to(k.dtype), None if dv is None else dv.to(v.dtype)
