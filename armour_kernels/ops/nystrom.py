"""Nyström attention as a torch op: argument checks, the backend choice, the ops' fake and Triton kernels.

The op runs on armour_kernels::nystrom_fwd / nystrom_bwd, declared in C++ with their CPU kernels
and autograd (csrc/torch_ops/); _linear_attention_ops.py says how a call reaches its kernel. The
Triton launchers (armour_kernels/triton/nystrom.py), registered here for CUDA tensors, and the C++
kernels share one contract, layout (B, N, H, D), any strides, q NOT scaled and NOT padded (the
kernels pad and scale, as the original layer does):
```
nystrom_fwd(q, k, v, conv_weight, num_landmarks, pinv_iterations, mode) -> (out, q̃, k̃, W, Y, lse3)
nystrom_bwd(dout, q, k, v, conv_weight, q̃, k̃, W, Y, lse3, num_landmarks, pinv_iterations, mode)
    -> (dq, dk, dv, dconv_weight)
```
out (B, N, H, Dv) in q's dtype; saved: landmarks q̃ (scaled), k̃ (B·H, m, D), W = A3·v and
Y = pinv(A2)·W (B·H, m, Dv), lse3 (B·H, m), all fp32. v None: the unscaled query is the value
(value="q"), its value gradient is inside dq and dv is an empty tensor. conv_weight (H, 1, K, 1)
or None (dconv_weight then an empty tensor).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._empty import zeros_of
from ..plan import nystrom_plan
from ._linear_attention import MODES, check_choice, check_qkv, heads_first
from ._linear_attention_ops import LinearAttentionOps, empty_if_none, value_of

OP = "nystrom_attention"


def _triton_forward(q: Tensor, k: Tensor, v: Optional[Tensor], conv_weight: Optional[Tensor], num_landmarks: int,
                    pinv_iterations: int, mode: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from ..triton.nystrom import nystrom_forward  # on the first call: triton is a large import
    out, saved = nystrom_forward(q, k, v, conv_weight, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations,
                                 mode=mode, value=value_of(v))
    return (out, *saved)


def _triton_backward(dout: Tensor, q: Tensor, k: Tensor, v: Optional[Tensor], conv_weight: Optional[Tensor],
                     q_landmarks: Tensor, k_landmarks: Tensor, w: Tensor, y: Tensor, lse: Tensor, num_landmarks: int,
                     pinv_iterations: int, mode: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from ..triton.nystrom import nystrom_backward
    dq, dk, dv, dconv = nystrom_backward(dout, q, k, v, conv_weight, (q_landmarks, k_landmarks, w, y, lse),
                                         num_landmarks=num_landmarks, pinv_iterations=pinv_iterations, mode=mode,
                                         value=value_of(v))
    return dq, dk, empty_if_none(dv, q), empty_if_none(dconv, q)


def _forward_fake(q, k, v, conv_weight, num_landmarks, pinv_iterations, mode):
    batch, n, heads, d = q.shape
    dv = d if v is None else v.shape[3]
    bh, m = batch * heads, num_landmarks
    f32 = torch.float32
    return (q.new_empty(batch, n, heads, dv), q.new_empty(bh, m, d, dtype=f32), q.new_empty(bh, m, d, dtype=f32),
            q.new_empty(bh, m, dv, dtype=f32), q.new_empty(bh, m, dv, dtype=f32), q.new_empty(bh, m, dtype=f32))


def _backward_fake(dout, q, k, v, conv_weight, q_landmarks, k_landmarks, w, y, lse, num_landmarks, pinv_iterations,
                   mode):
    dv = v.new_empty(v.shape) if v is not None else q.new_empty(0)
    dconv = conv_weight.new_empty(conv_weight.shape) if conv_weight is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), dv, dconv


OPS = LinearAttentionOps("nystrom", _triton_forward, _triton_backward, _forward_fake, _backward_fake, tensor_inputs=4)


def _check(q, k, v, num_landmarks, pinv_iterations, mode, value, conv_weight):
    check_choice(OP, "mode", mode, MODES)
    if isinstance(num_landmarks, bool) or not isinstance(num_landmarks, int) or num_landmarks < 1:
        raise ValueError(f"{OP}: num_landmarks must be an integer ≥ 1, got {num_landmarks!r}")
    if isinstance(pinv_iterations, bool) or not isinstance(pinv_iterations, int) or pinv_iterations < 0:
        raise ValueError(f"{OP}: pinv_iterations must be an integer ≥ 0, got {pinv_iterations!r}")
    check_qkv(OP, q, k, v, value, same_length=True)
    if conv_weight is None:
        return
    if not isinstance(conv_weight, Tensor) or not conv_weight.is_floating_point():
        raise TypeError(f"{OP}: conv_weight must be a floating-point tensor, got "
                        f"{getattr(conv_weight, 'dtype', type(conv_weight).__name__)}")
    heads = q.shape[2]
    if conv_weight.dim() != 4 or conv_weight.shape[0] != heads or conv_weight.shape[1] != 1 \
            or conv_weight.shape[3] != 1 or conv_weight.shape[2] % 2 != 1:
        raise ValueError(f"{OP}: conv_weight must be the depthwise (H, 1, K, 1) weight with H = {heads} and K odd, "
                         f"got {tuple(conv_weight.shape)}")
    if conv_weight.device != q.device:
        raise TypeError(f"{OP}: conv_weight is on {conv_weight.device} but q is on {q.device}")


def nystrom_attention(q: Tensor, k: Tensor, v: Optional[Tensor] = None, *, num_landmarks: int,
                      pinv_iterations: int = 6, mode: str = "clean", value: str = "v",
                      conv_weight: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """Nyström attention (docs/nystrom.md) of q, k, v (B, N, H, D) straight out of a bias-free projection.

    q is NOT pre-scaled (the op scales by d^-1/2) and any N works: the op front-pads with zero
    rows to a multiple of num_landmarks exactly like nystrom-attention 0.0.14 and returns the
    last N rows, (B, N, H, Dv).
    mode: "clean" (pinv scaling per (batch, head)) or "seed" (over the whole batch, paper code).
    value: "v", or "q" (Armour: the unscaled query is the value; no v).
    conv_weight: the residual depthwise Conv2d(h, h, (K, 1), groups=h, bias=False) weight
    (H, 1, K, 1), applied to the value along the sequence; None for no residual.
    backend: "auto" | "triton" | "cpu" | "reference" (docs/backends.md).
    """
    _check(q, k, v, num_landmarks, pinv_iterations, mode, value, conv_weight)
    plan = nystrom_plan(q, backend=backend)  # plan.py has the rules: path, dtypes, empty inputs
    if plan.empty:  # an empty output (docs/numerics.md)
        return zeros_of((*q.shape[:3], q.shape[3] if v is None else v.shape[3]), q, k, v, conv_weight)
    if plan.path == "reference":
        from python_ref.nystrom import nystrom_attention as reference
        out = reference(heads_first(q), heads_first(k), heads_first(v), num_landmarks=num_landmarks,
                        pinv_iterations=pinv_iterations, mode=mode, value=value, conv_weight=conv_weight)
        return out.transpose(1, 2)
    return OPS.forward(plan.path)(q, k, v, conv_weight, num_landmarks, pinv_iterations, mode)[0]


__all__ = ["nystrom_attention"]
