"""The Triton launchers (triton/attention.py) as the attention op's kernels.

On CUDA they are the CUDA kernels of the dispatcher ops armour_kernels::attention /
attention_backward (schemas in csrc/torch_ops/schemas.cpp), so every call — eager, compiled,
exported — goes through the one C++ autograd (csrc/torch_ops/attention_autograd.cpp) and the
dispatcher picks the C++ kernel for CPU tensors and these for CUDA tensors. triton is imported on
the first call, not at `import armour_kernels`.

The interpreter path: under TRITON_INTERPRET=1 the tests run the Triton kernels on CPU tensors
with backend="triton", which the dispatcher would send to the C++ kernel. For that case only (and
on a machine without the built extension) the launchers are also the Python custom ops
armour_kernels::triton_attention / triton_attention_backward with their own autograd formula.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..plan import TRITON_DTYPES
from ..plan import attention_empty
from ._attention_checks import check, check_index_range, check_scale


def value_width(q: Tensor, k: Tensor, v: Optional[Tensor], value: str) -> int:
    widths = {"q": q.shape[-1], "k": k.shape[-1], "v": v.shape[-1] if v is not None else 0}
    return sum(widths[part] for part in value.split("+"))


def triton_forward(q, k, v, bias, bias_index, value, scale, mask_diagonal):
    """(out, lse) from the Triton forward, after the op's checks (the CUDA kernel is called from
    anywhere: the checks and the index range check run here, at call time)."""
    check(q, k, v, value, bias, bias_index)
    check_scale(scale, q)
    if q.dtype not in TRITON_DTYPES:
        raise TypeError(f"attention: backend 'triton' supports {TRITON_DTYPES}, got {q.dtype}; "
                        "use backend='reference' for other dtypes")
    if bias_index is not None:
        check_index_range(bias_index, bias.shape[1])
    if attention_empty(q, k):  # plan.py: nothing to compute
        batch, nq, heads, _ = q.shape
        return (q.new_zeros((batch, nq, heads, value_width(q, k, v, value))),
                q.new_full((batch, heads, nq), math.inf, dtype=torch.float32))
    from ..triton.attention import attention_forward
    return attention_forward(q, k, v, bias, bias_index, value=value, scale=scale, mask_diagonal=mask_diagonal)


def triton_backward(dout, q, k, v, bias, bias_index, out, lse, value, scale, mask_diagonal, need_dbias):
    """(dq, dk, dv, dbias) from the Triton backward; dv / dbias are empty tensors when absent."""
    need_dbias = need_dbias and bias is not None
    if attention_empty(q, k):  # plan.py: nothing to compute
        dv = torch.zeros_like(v) if "v" in value else None
        dbias = bias.new_zeros(bias.shape, dtype=torch.float32) if need_dbias else None
        dq, dk = torch.zeros_like(q), torch.zeros_like(k)
    else:
        from ..triton.attention import attention_backward
        dq, dk, dv, dbias = attention_backward(dout, q, k, v, bias, bias_index, out, lse, value=value, scale=scale,
                                               mask_diagonal=mask_diagonal, need_dbias=need_dbias)
    return (dq, dk, dv if dv is not None else q.new_empty(0),
            dbias if dbias is not None else q.new_empty(0, dtype=torch.float32))


def attention_fake(q, k, v, bias, bias_index, value, scale, mask_diagonal):
    """The meta implementation of the forward (every kernel returns these shapes and dtypes)."""
    batch, nq, heads, _ = q.shape
    out = q.new_empty((batch, nq, heads, value_width(q, k, v, value)))
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32  # the CPU kernels' float64 path
    return out, q.new_empty((batch, heads, nq), dtype=lse_dtype)


def attention_backward_fake(dout, q, k, v, bias, bias_index, out, lse, value, scale, mask_diagonal, need_dbias):
    dv = q.new_empty(v.shape) if v is not None and "v" in value else q.new_empty(0)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # the CPU kernels' float64 path
    dbias = q.new_empty(bias.shape, dtype=acc) if need_dbias and bias is not None else q.new_empty(0, dtype=acc)
    return q.new_empty(q.shape), k.new_empty(k.shape), dv, dbias


def register_dispatcher_kernels() -> None:
    """The fake implementations and the CUDA (Triton) kernels of the C++-defined ops."""
    torch.library.register_fake("armour_kernels::attention", attention_fake)
    torch.library.register_fake("armour_kernels::attention_backward", attention_backward_fake)
    torch.library.register_kernel("armour_kernels::attention", "cuda", triton_forward)
    torch.library.register_kernel("armour_kernels::attention_backward", "cuda", triton_backward)


# ----------------------------------------------------------------------------- the interpreter path

@torch.library.custom_op("armour_kernels::triton_attention", mutates_args=())
def triton_attention(q: Tensor, k: Tensor, v: Optional[Tensor], bias: Optional[Tensor], bias_index: Optional[Tensor],
                     value: str, scale: float, mask_diagonal: bool) -> tuple[Tensor, Tensor]:
    return triton_forward(q, k, v, bias, bias_index, value, scale, mask_diagonal)


@torch.library.custom_op("armour_kernels::triton_attention_backward", mutates_args=())
def triton_attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Optional[Tensor], bias: Optional[Tensor],
                              bias_index: Optional[Tensor], out: Tensor, lse: Tensor, value: str, scale: float,
                              mask_diagonal: bool, need_dbias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return triton_backward(dout, q, k, v, bias, bias_index, out, lse, value, scale, mask_diagonal, need_dbias)


triton_attention.register_fake(attention_fake)
triton_attention_backward.register_fake(attention_backward_fake)


def _setup_context(ctx, inputs, output):
    q, k, v, bias, bias_index, value, scale, mask_diagonal = inputs
    ctx.save_for_backward(q, k, v, bias, bias_index, *output)
    ctx.options = (value, scale, mask_diagonal)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, dout, _dlse):
    """What csrc/torch_ops/attention_autograd.cpp does for the dispatcher op."""
    q, k, v, bias, bias_index, out, lse = ctx.saved_tensors
    value, scale, mask_diagonal = ctx.options
    need_dbias = bias is not None and ctx.needs_input_grad[3]  # the bias gradient costs a full pass
    dq, dk, dv, dbias = triton_attention_backward(dout, q, k, v, bias, bias_index, out, lse, value, scale,
                                                  mask_diagonal, need_dbias)
    return (dq, dk, dv if v is not None and "v" in value else None, dbias.to(bias.dtype) if need_dbias else None,
            None, None, None, None)


triton_attention.register_autograd(_backward, setup_context=_setup_context)
