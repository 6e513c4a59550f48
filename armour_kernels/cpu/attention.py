"""CPU launchers of the attention family (the backend contract in docs/layouts.md, same as Triton's).

Thin: argument plumbing only; the kernels (blocked online softmax forward, FlashAttention-2
style backward, every value source / bias form / diagonal mask) are in csrc/kernels/.
float32, bfloat16 and float64 run natively; float16 is computed in float32 (the CPU has no
fast fp16 arithmetic) and cast back.
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
    """out (B, Nq, H, Dv_total) contiguous in q's dtype, lse (B, H, Nq) float32 (float64 for float64)."""
    C = _require()
    if q.dtype == torch.float16:
        out, lse = C.attention(q.float(), k.float(), _f32(v), _bias(bias), bias_index, value, _scale(q, scale),
                               mask_diagonal)
        return out.half(), lse
    out, lse = C.attention(q, k, v, _bias(bias), bias_index, value, _scale(q, scale), mask_diagonal)
    return out, lse


def attention_backward(dout, q, k, v, bias, bias_index, out, lse, *, value, scale, mask_diagonal, need_dbias):
    """(dq, dk, dv or None, dbias or None): dbias dense (B, H, Nq, Nk) or table (H, R), float32."""
    C = _require()
    if q.dtype == torch.float16:
        dq, dk, dv, dbias = C.attention_backward(dout.float(), q.float(), k.float(), _f32(v), _bias(bias), bias_index,
                                                 out.float(), lse, value, _scale(q, scale), mask_diagonal, need_dbias)
        return dq.half(), dk.half(), None if dv is None else dv.half(), dbias
    return tuple(C.attention_backward(dout, q, k, v, _bias(bias), bias_index, out, lse, value, _scale(q, scale),
                                      mask_diagonal, need_dbias))
