"""Performer (FAVOR+) attention as a torch op: argument checks, the backend choice, the ops' fake and Triton kernels.

The op runs on armour_kernels::performer_fwd / performer_bwd, declared in C++ with their CPU
kernels and autograd (csrc/torch_ops/); _linear_attention_ops.py says how a call reaches its
kernel. The Triton launchers (armour_kernels/triton/performer.py), registered here for CUDA
tensors, and the C++ kernels share one contract, layout (B, N, H, D), any strides:
```
performer_fwd(q, k, v, projection, kernel, mode) -> (out, ctx, ksum, stab)
performer_bwd(dout, q, k, v, projection, ctx, ksum, stab, kernel, mode) -> (dq, dk, dv)
```
out (B, Nq, H, Dv) in q's dtype; ctx = Σₙφ(kₙ)vₙᵀ (B·H, m, Dv), ksum = Σₙφ(kₙ) (B·H, m) and
the key stabiliser stab (B·H,), all fp32, saved for the backward. v None: the query is the
value (value="q"), its value gradient is inside dq and dv is an empty tensor. The projection is
a fixed buffer: it gets no gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..constants import PERFORMER_KERNELS as KERNELS
from ._empty import zeros_of
from ..plan import performer_plan
from ._linear_attention import MODES, check_choice, check_qkv, heads_first
from ._linear_attention_ops import LinearAttentionOps, empty_if_none, value_of

OP = "performer_attention"


def _triton_forward(q: Tensor, k: Tensor, v: Optional[Tensor], projection: Tensor, kernel: str,
                    mode: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from ..triton.performer import performer_forward  # on the first call: triton is a large import
    return tuple(performer_forward(q, k, v, projection, kernel=kernel, mode=mode, value=value_of(v)))


def _triton_backward(dout: Tensor, q: Tensor, k: Tensor, v: Optional[Tensor], projection: Tensor, ctx: Tensor,
                     ksum: Tensor, stab: Tensor, kernel: str, mode: str) -> tuple[Tensor, Tensor, Tensor]:
    from ..triton.performer import performer_backward
    dq, dk, dv = performer_backward(dout, q, k, v, projection, ctx, ksum, stab, kernel=kernel, mode=mode,
                                    value=value_of(v))
    return dq, dk, empty_if_none(dv, q)


def _forward_fake(q, k, v, projection, kernel, mode):
    batch, n, heads, _ = q.shape
    dv = q.shape[3] if v is None else v.shape[3]
    bh, m = batch * heads, projection.shape[0]
    f32 = torch.float32
    return (q.new_empty(batch, n, heads, dv), q.new_empty(bh, m, dv, dtype=f32), q.new_empty(bh, m, dtype=f32),
            q.new_empty(bh, dtype=f32))


def _backward_fake(dout, q, k, v, projection, ctx, ksum, stab, kernel, mode):
    dv = v.new_empty(v.shape) if v is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), dv


OPS = LinearAttentionOps("performer", _triton_forward, _triton_backward, _forward_fake, _backward_fake,
                         tensor_inputs=4)


def _check(q, k, v, projection, kernel, mode, value):
    check_choice(OP, "kernel", kernel, KERNELS)
    check_choice(OP, "mode", mode, MODES)
    check_qkv(OP, q, k, v, value, same_length=False)
    if not isinstance(projection, Tensor) or not projection.is_floating_point():
        raise TypeError(f"{OP}: projection must be a floating-point (m, d) tensor, "
                        f"got {getattr(projection, 'dtype', type(projection).__name__)}")
    if projection.dim() != 2 or projection.shape[1] != q.shape[3] or projection.shape[0] < 1:
        raise ValueError(f"{OP}: projection must be (m, d) with d = {q.shape[3]} (the head dim) and m ≥ 1, "
                         f"got {tuple(projection.shape)}")
    if projection.device != q.device:
        raise TypeError(f"{OP}: projection is on {projection.device} but q is on {q.device}")


def performer_attention(q: Tensor, k: Tensor, v: Optional[Tensor] = None, *, projection: Tensor,
                        kernel: str = "softmax", mode: str = "clean", value: str = "v",
                        backend: str = "auto") -> Tensor:
    """FAVOR+ attention φ(q)(φ(k)ᵀv) / (φ(q)·Σₙφ(k)) (docs/performer.md), layout (B, N, H, D) → (B, Nq, H, Dv).

    projection: the (m, d) random-feature matrix (a fixed buffer, no gradient).
    kernel: "softmax" (positive random features) or "relu" (generalised kernel).
    mode: "clean" (key stabiliser per (batch, head), detached; performer-pytorch ≥ 1.1.4) or
    "seed" (one stabiliser over the whole batch, not detached; the paper's code).
    value: "v", or "q" (Armour: the query is the value; no v).
    backend: "auto" | "triton" | "cpu" | "reference" (docs/backends.md).
    """
    _check(q, k, v, projection, kernel, mode, value)
    plan = performer_plan(q, backend=backend)  # plan.py has the rules: path, dtypes, empty inputs
    if plan.empty:  # an empty output (docs/numerics.md)
        return zeros_of((*q.shape[:3], q.shape[3] if v is None else v.shape[3]), q, k, v, projection)
    if plan.path == "reference":
        from python_ref.performer import performer_attention as reference
        out = reference(heads_first(q), heads_first(k), heads_first(v), projection=projection, kernel=kernel,
                        mode=mode, value=value)
        return out.transpose(1, 2)
    return OPS.forward(plan.path)(q, k, v, projection.detach(), kernel, mode)[0]


__all__ = ["performer_attention", "KERNELS"]
