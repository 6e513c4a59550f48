"""NaN-propagating maxima for the Triton kernels.

On a GPU, tl.max and tl.maximum skip NaN by default (IEEE maxNum: max(NaN, x) = x), unlike
torch.max / torch.amax. Where a maximum only shifts an exponent (the online-softmax running max)
that is harmless: the NaN score itself still reaches exp and the row's sum. Where a maximum
becomes a value other rows or heads use (Performer's stabilisers, the Nyström pinv's Z₀ divisor),
a skipped NaN would leave results finite that the reference makes NaN, so those use `nan_max`.
(The interpreter's tl.maximum propagates NaN and its tl.max skips it: neither is the GPU's rule
for both, so the NaN tests run the interpreter with the GPU's rule, tests/triton/test_triton_nan.py.)
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def nan_max(x, axis):
    """tl.max(x, axis), NaN where the reduced slice has a NaN (as torch.amax)."""
    top = tl.max(x, axis=axis)
    return tl.where(tl.max((x != x).to(tl.int32), axis=axis) > 0, float("nan"), top)
