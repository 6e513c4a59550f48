"""CPU launchers of Nyström attention (the contract in armour_kernels/ops/nystrom.py).

Forward: the fused C++ kernel (csrc/kernels/nystrom_kernel.h: landmark means with the front
padding implicit, pinv(A2) per (b, h) in fp32, A3·v as an online softmax over keys without A3,
softmax(q k̃ᵀ)·(Z·A3·v) per row block plus the depthwise residual conv), float32.
Backward: NOT fused — recompute through python_ref.nystrom under autograd (exact; see
armour_kernels/cpu/_linear_common.py).
"""
from __future__ import annotations

from . import _require
from ._linear_common import f32, recompute_grads


def nystrom_forward(q, k, v, conv_weight, *, num_landmarks, pinv_iterations, mode, value):
    """(out (B, N, H, Dv) in q's dtype, (q̃ scaled, k̃, W = A3·v, Y = pinv(A2)·W, lse3)), saved all fp32."""
    out, *saved = _require().nystrom_attention(f32(q), f32(k), f32(v) if value == "v" else None, conv_weight,
                                               num_landmarks, pinv_iterations, mode)
    return out.to(q.dtype), tuple(saved)


def nystrom_backward(dout, q, k, v, conv_weight, saved, *, num_landmarks, pinv_iterations, mode, value):
    """(dq, dk, dv or None, dconv_weight or None) by autograd through python_ref (not a fused kernel)."""
    from python_ref.nystrom import nystrom_attention as reference

    def run(q, k, v, conv_weight):
        return reference(q, k, v, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations, mode=mode,
                         value=value, conv_weight=conv_weight)

    dq, dk, dv, dconv = recompute_grads(run, dout, (q, k, v if value == "v" else None), (conv_weight,))
    return dq, dk, dv, dconv
