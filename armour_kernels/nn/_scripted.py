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


def check_scriptable(backend: str) -> None:
    """A scripted call runs the kernel the dispatcher picks from the tensors' device (CUDA → the
    Triton kernels, CPU → the C++ kernels); the reference backend is Python and cannot run here.
    `use_backend` and ARMOUR_KERNELS_BACKEND are Python state that TorchScript cannot read."""
    if backend == "reference":
        raise RuntimeError("armour_kernels: the 'reference' backend is Python and does not run in TorchScript; "
                           "patch the model with backend='auto', 'cpu' or 'triton' before torch.jit.script")


def attention_op(q: Tensor, k: Tensor, v: Optional[Tensor], bias: Optional[Tensor], bias_index: Optional[Tensor],
                 value: str, scale: float, mask_diagonal: bool, backend: str) -> Tensor:
    """softmax(scale·q·kᵀ + bias)·value, (B, N, H, D) layout, as `armour_kernels.attention` computes it."""
    check_scriptable(backend)
    out, _ = torch.ops.armour_kernels.attention(q, k, v, bias, bias_index, value, scale, mask_diagonal)
    return out


__all__ = ["attention_op", "check_scriptable"]
