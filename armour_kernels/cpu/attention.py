"""CPU launchers of the attention family (the backend contract in docs/layouts.md, same as Triton's).

The kernels (flash-style forward, FlashAttention-2 style backward, every value source / bias form
/ diagonal mask, on oneDNN's brgemm or hand-written micro-kernels, see armour_kernels.cpu) are in
csrc/ and reached through the dispatcher ops armour_kernels::attention / attention_backward (their
CPU kernels); these two functions only call them in the launcher signature. float32, bfloat16 and
float64 run natively; float16 is computed in float32 (no AMX-FP16 or fp16 brgemm on the CPUs users
serve on) and cast back, inside the extension. A fully masked row (every score -inf) gets output 0
and lse +inf (docs/numerics.md); empty inputs give empty outputs, no keys give zeros.
"""
from __future__ import annotations

import torch

from . import _require


def _scale(q, scale):
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def attention_forward(q, k, v, bias, bias_index, *, value, scale, mask_diagonal):
    """out (B, Nq, H, Dv_total) contiguous in q's dtype, lse (B, H, Nq) float32 (float64 for float64;
    +inf for a fully masked row)."""
    _require()
    v = v if "v" in value else None  # the launcher contract ignores an unused v; the op refuses one
    return torch.ops.armour_kernels.attention.default(q, k, v, bias, bias_index, value, _scale(q, scale),
                                                      bool(mask_diagonal))


def attention_backward(dout, q, k, v, bias, bias_index, out, lse, *, value, scale, mask_diagonal, need_dbias):
    """(dq, dk, dv or None, dbias or None): dbias in the bias's own shape — the table (H, R), or a
    dense bias's broadcast shape — float32 (float64 for float64 inputs; the caller casts it to the
    bias dtype)."""
    _require()
    v = v if "v" in value else None
    dq, dk, dv, dbias = torch.ops.armour_kernels.attention_backward.default(
        dout, q, k, v, bias, bias_index, out, lse, value, _scale(q, scale), bool(mask_diagonal), bool(need_dbias))
    return dq, dk, dv if "v" in value else None, dbias if need_dbias and bias is not None else None
