"""What the CPU Nyström and Performer launchers share: the kernels work in float32.

The C++ kernels (csrc/kernels/nystrom_kernel.h, performer_kernel.h and their backward headers)
read float32 tensors of any strides: bfloat16 / float16 inputs are converted on the way in and
the results cast back to the input's dtype.
"""
from __future__ import annotations

import torch


def f32(t):
    """t as float32 (a no-op for float32 tensors: strides are kept, the kernels read any strides)."""
    if t is None or t.dtype == torch.float32:
        return t
    return t.float()


def cast_like(t, like):
    """t in like's dtype (None stays None)."""
    return None if t is None else t.to(like.dtype)
