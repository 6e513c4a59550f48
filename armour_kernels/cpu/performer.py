"""CPU launchers of Performer (FAVOR+) attention (the contract in armour_kernels/ops/performer.py).

Both directions are fused C++ kernels working in float32 (docs/performer.md): φ(q), φ(k) exist
only one block of tokens at a time. Forward (csrc/kernels/performer_kernel.h): Σφ(k)vᵀ and Σφ(k)
in one pass over the keys (the key stabiliser as an online maximum), then the output pass.
Backward (csrc/kernels/performer_backward_kernel.h): every kernel and mode, seed mode's attached
batch-wide stabiliser included.
"""
from __future__ import annotations

from . import _require
from ._linear_common import cast_like, f32


def performer_forward(q, k, v, projection, *, kernel, mode, value):
    """(out (B, Nq, H, Dv) in q's dtype, ctx (B·H, m, Dv), ksum (B·H, m), stab (B·H,)), fp32 reductions."""
    out, ctx, ksum, stab = _require().performer_attention(f32(q), f32(k), f32(v) if value == "v" else None,
                                                          projection, kernel, mode)
    return out.to(q.dtype), ctx, ksum, stab


def performer_backward(dout, q, k, v, projection, ctx, ksum, stab, *, kernel, mode, value):
    """(dq, dk, dv or None) from the fused C++ backward (seed mode's attached stabiliser included)."""
    dq, dk, dv = _require().performer_attention_backward(
        f32(dout), f32(q), f32(k), f32(v) if value == "v" else None, projection, ctx, ksum, stab, kernel, mode)
    return dq.to(q.dtype), dk.to(k.dtype), cast_like(dv, v) if value == "v" else None
