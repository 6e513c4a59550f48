"""CPU launchers of Nyström attention (the contract in armour_kernels/ops/nystrom.py).

Both directions are fused C++ kernels working in float32 (docs/nystrom.md):
- forward (csrc/kernels/nystrom_kernel.h): landmark means with the front padding implicit,
  pinv(A2) per (b, h), W = A3·v as an online softmax over key blocks (A3 never stored), then
  softmax(q k̃ᵀ)·(Z·W) per block of rows plus the depthwise residual conv;
- backward (csrc/kernels/nystrom_backward_kernel.h): hand-derived gradients, A1 and A3 recomputed
  a block of tokens at a time; the m×m pinv's backward through its iterations runs as batched
  ATen ops (csrc/nystrom_pinv.cpp).
"""
from __future__ import annotations

from . import _require
from ._linear_common import cast_like, f32


def nystrom_forward(q, k, v, conv_weight, *, num_landmarks, pinv_iterations, mode, value):
    """(out (B, N, H, Dv) in q's dtype, (q̃ scaled, k̃, W = A3·v, Y = pinv(A2)·W, lse3)), saved all fp32."""
    out, *saved = _require().nystrom_attention(f32(q), f32(k), f32(v) if value == "v" else None, conv_weight,
                                               num_landmarks, pinv_iterations, mode)
    return out.to(q.dtype), tuple(saved)


def nystrom_backward(dout, q, k, v, conv_weight, saved, *, num_landmarks, pinv_iterations, mode, value):
    """(dq, dk, dv or None, dconv_weight or None) from the fused C++ backward, in the inputs' dtypes."""
    dq, dk, dv, dconv = _require().nystrom_attention_backward(
        f32(dout), f32(q), f32(k), f32(v) if value == "v" else None, conv_weight, *saved, num_landmarks,
        pinv_iterations, mode)
    return (dq.to(q.dtype), dk.to(k.dtype), cast_like(dv, v) if value == "v" else None,
            cast_like(dconv, conv_weight) if conv_weight is not None else None)
