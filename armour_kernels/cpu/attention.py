"""CPU launchers of the attention family (the backend contract in docs/layouts.md, same as Triton's).

Thin: argument plumbing only; the kernels (flash-style forward, FlashAttention-2 style backward,
every value source / bias form / diagonal mask, on oneDNN's brgemm or hand-written micro-kernels,
see armour_kernels.cpu) are in csrc/. float32, bfloat16 and float64 run natively; float16 is
computed in float32 (no AMX-FP16 or fp16 brgemm on the CPUs users serve on) and cast back.
A fully masked row (every score -inf) gets output 0 and lse +inf (docs/numerics.md); empty inputs
give empty outputs, no keys give zeros.
"""
from __future__ import annotations

import torch

from . import _require


def _scale(q, scale):
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def _f32(t):
    return None if t is None else t.float()


def _bias(bias):
    """The kernels read float32 / bfloat16 / float64 biases (any strides); float16 is widened."""
    return bias.float() if bias is not None and bias.dtype == torch.float16 else bias


def attention_forward(q, k, v, bias, bias_index, *, value, scale, mask_diagonal):
    """out (B, Nq, H, Dv_total) contiguous in q's dtype, lse (B, H, Nq) float32 (float64 for float64;
    +inf for a fully masked row). float16 is computed in float32 inside the extension."""
    return tuple(_require().attention(q, k, v, bias, bias_index, value, _scale(q, scale), mask_diagonal))


def attention_backward(dout, q, k, v, bias, bias_index, out, lse, *, value, scale, mask_diagonal, need_dbias):
    """(dq, dk, dv or None, dbias or None): dbias in the bias's own shape — the table (H, R), or a
    dense bias's broadcast shape — float32 (float64 for float64 inputs; the caller casts it to the
    bias dtype)."""
    C = _require()
    if q.dtype == torch.float16:
        dq, dk, dv, dbias = C.attention_backward(dout.float(), q.float(), k.float(), _f32(v), _bias(bias), bias_index,
                                                 out.float(), lse, value, _scale(q, scale), mask_diagonal, need_dbias)
        dq, dk, dv = dq.half(), dk.half(), None if dv is None else dv.half()
    else:
        dq, dk, dv, dbias = C.attention_backward(dout, q, k, v, _bias(bias), bias_index, out, lse, value,
                                                 _scale(q, scale), mask_diagonal, need_dbias)
    if dbias is not None and bias_index is None:
        # The kernel writes a dense bias's gradient at (B, H, Nq, Nk), one slice per task (race-free);
        # reduced here to the broadcast shape the caller gave.
        dbias = dbias.sum_to_size(bias.shape)
    return dq, dk, dv, dbias
