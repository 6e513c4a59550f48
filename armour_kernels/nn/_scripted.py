"""What the fused modules call from TorchScript: the attention op through the dispatcher.

`torch.jit.script` compiles the modules' scripted branch (`torch.jit.is_scripting()`), which can
call no Python: the attention kernel is reached as `torch.ops.armour_kernels.*`, a dispatcher op
with its autograd formula registered (armour_kernels/ops/attention.py), and the dense layers
around it run as their own modules (ATen's Linear / Conv / activation).

Every scripted attention call goes through `attention_op`, and only it names the op: one line to
change when the op's schema changes.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def kernel_backend(backend: str, q: Tensor) -> str:
    """The kernel backend a scripted call runs: the module's own, or for "auto" the device's
    (CUDA → "triton", else "cpu"). `use_backend` and ARMOUR_KERNELS_BACKEND are Python state that
    compiled TorchScript cannot read; the reference backend is Python too."""
    if backend == "auto":
        return "triton" if q.is_cuda else "cpu"
    if backend == "reference":
        raise RuntimeError("armour_kernels: the 'reference' backend is Python and does not run in TorchScript; "
                           "patch the model with backend='auto', 'cpu' or 'triton' before torch.jit.script")
    return backend


def attention_op(q: Tensor, k: Tensor, v: Optional[Tensor], bias: Optional[Tensor], bias_index: Optional[Tensor],
                 value: str, scale: float, mask_diagonal: bool, backend: str) -> Tensor:
    """softmax(scale·q·kᵀ + bias)·value, (B, N, H, D) layout, as `armour_kernels.attention` computes it."""
    out, _ = torch.ops.armour_kernels.attention_fwd(q, k, v, bias, bias_index, value, scale, mask_diagonal,
                                                    kernel_backend(backend, q))
    return out


__all__ = ["attention_op", "kernel_backend"]
