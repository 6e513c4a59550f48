"""Softmax attention as a torch op: which way a call goes, the fake implementations, the reference.

Layout is FlashAttention's (B, N, H, D), any strides: q, k and v may be views straight into a
packed projection such as qkv(x).view(B, N, 3, H, D)[:, :, i]. The value matrix is chosen by
`value` (docs/attention.md): "v", "q" (Armour), "k", "q+v", "q+k" (the concat is never materialised).

One way into each kernel: the dispatcher op `armour_kernels::attention` (and its
`attention_backward`), schemas in csrc/torch_ops/schemas.cpp. Its CPU kernel is C++ and checks
the arguments itself; its CUDA kernel is the Triton launcher (ops/_attention_triton.py); its
autograd is C++ (gradients add up when one tensor plays two parts: Armour's q is query and value,
shared_qk's k is q); its fake implementation is Python, so `torch.compile(fullgraph=True)`,
torch.export and AOTInductor packages call the op itself, no Python body on the call. The
"reference" backend runs python_ref with plain PyTorch autograd, and backend "triton" on CPU
tensors (the Triton interpreter) runs the launchers as Python custom ops (ops/_attention_triton.py).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import cpu
from ..constants import VALUE_SOURCES
from ..plan import attention_empty, attention_path
from ._attention_checks import check, check_scale, range_checked
from ._attention_triton import register_dispatcher_kernels, triton_attention, value_width
from ._empty import zeros_of

# The dispatcher op, when the extension that defines it is built; loading the extension here
# (~2 ms) makes the schemas exist at `import armour_kernels`, as an AOTInductor package that calls
# the op needs in a fresh process.
_ATTENTION = _CALL_ATTENTION = None
if cpu.built():
    register_dispatcher_kernels()
    _ATTENTION = torch.ops.armour_kernels.attention.default
    # The same op through a typed binding (csrc/bindings.cpp): an eager call skips torch.ops' boxing
    # of every argument (~3 µs of a tiny call). Compiled code and tensor subclasses use _ATTENTION.
    _CALL_ATTENTION = cpu._C.call_attention


def _reference(q, k, v, value, scale, bias, bias_index, mask_diagonal):
    """python_ref in its (B, H, N, D) layout, differentiated by plain PyTorch autograd.

    Computed in float32 at least, like the kernels (float16 scores overflow at |q·k| ≳ 250), with
    the bias in that type too, and returned in q's dtype."""
    from python_ref.attention import attention as ref_attention
    from python_ref.attention import levit_bias

    bias_index = check(q, k, v, value, bias, bias_index)
    scale = check_scale(scale, q)
    if attention_empty(q, k):
        return zeros_of((*q.shape[:3], value_width(q, k, v, value)), q, k, v, bias)
    work = torch.promote_types(q.dtype, torch.float32)

    def heads_first(t):
        return t.transpose(1, 2).to(work) if t is not None else None

    if bias is not None and bias_index is not None:
        bias = levit_bias(bias, range_checked(bias_index, bias.shape[1]))
    bias = bias.to(work) if bias is not None else None
    out = ref_attention(heads_first(q), heads_first(k), heads_first(v), value=value, scale=scale, bias=bias,
                        mask_diagonal=mask_diagonal)
    return out.transpose(1, 2).to(q.dtype)


def attention(q: Tensor, k: Tensor, v: Optional[Tensor] = None, *, value: str = "v", scale: Optional[float] = None,
              bias: Optional[Tensor] = None, bias_index: Optional[Tensor] = None, mask_diagonal: bool = False,
              backend: str = "auto") -> Tensor:
    """softmax(scale·q·kᵀ + bias)·value per head, layout (B, N, H, D) → (B, Nq, H, Dv_total).

    value: "v", "q" (Armour), "k", "q+v", "q+k" (concat along features, q first).
    bias: broadcastable to (B, H, Nq, Nk); or, with bias_index (Nq, Nk) int64 (or int32), the LeViT
    table (H, R) read as table[h, bias_index[i, j]]. A query row whose every score is -inf gets
    output 0 and gives no gradient (docs/numerics.md).
    mask_diagonal: exclude the diagonal key (shared_qk_nodiag), unless a row has no other key.
    backend: "auto" | "triton" | "cpu" | "reference" (docs/backends.md).
    """
    if not isinstance(q, Tensor):
        raise TypeError(f"attention: q must be a tensor, got {type(q).__name__}")
    path = attention_path(q, backend)  # plan.py has the rules
    if path == "reference":
        return _reference(q, k, v, value, scale, bias, bias_index, mask_diagonal)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if path == "dispatcher":
        # The kernels check the arguments (the C++ kernel on CPU, the Triton launcher's wrapper on CUDA).
        if type(q) is Tensor and not torch.compiler.is_compiling():
            return _CALL_ATTENTION(q, k, v, bias, bias_index, value, scale, bool(mask_diagonal))
        return _ATTENTION(q, k, v, bias, bias_index, value, scale, bool(mask_diagonal))[0]
    return triton_attention(q, k, v, bias, bias_index, value, scale, bool(mask_diagonal))[0]


def armour_attention(q: Tensor, k: Tensor, **kwargs) -> Tensor:
    """Armour attention softmax(s·q·kᵀ)·q (docs/attention.md): `attention` with value="q", no v."""
    return attention(q, k, value="q", **kwargs)


__all__ = ["attention", "armour_attention", "VALUE_SOURCES"]
