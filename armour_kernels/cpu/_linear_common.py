"""What the CPU Nyström and Performer launchers share: fp32 inputs, and the backward by recompute.

The C++ kernels (csrc/kernels/nystrom_kernel.h, performer_kernel.h, performer_backward_kernel.h)
work in float32: bfloat16 / float16 inputs are converted on the way in and the results cast back.

`recompute_grads` is the Nyström backward (Performer's is a fused C++ kernel): NOT a fused
kernel, it recomputes the forward with the pure-PyTorch definition (python_ref) under autograd
and differentiates it (torch.autograd.grad). It is exact (the definition's gradient, seed mode's
batch-wide pinv scaling included) but materialises what the fused forward avoids (A1, A3), so it
costs eager-PyTorch time and memory.
"""
from __future__ import annotations

import torch


def f32(t):
    """t as float32 (a no-op for float32 tensors: strides are kept, the kernels read any strides)."""
    if t is None or t.dtype == torch.float32:
        return t
    return t.float()


def recompute_grads(reference, dout, qkv, extra=()):
    """Gradients of reference(q, k, v, *extra) (python_ref layout (B, H, N, D)) wrt every non-None input.

    qkv: the launcher's (q, k, v or None) in (B, N, H, D); extra: further differentiable inputs
    passed as they are (e.g. the conv weight), or None. The reference runs in float32 at least
    (float64 stays float64). Returns one gradient per input, contiguous (as the ops' fake kernels say),
    in its dtype (None for None).
    """
    work = torch.promote_types(dout.dtype, torch.float32)
    inputs = [*qkv, *extra]
    leaves = [None if t is None else t.detach().to(work).requires_grad_(True) for t in inputs]
    # A custom op's implementation runs below the Autograd dispatch key (autograd is excluded in
    # this thread's dispatch TLS, whatever grad mode says): re-admit it for the recompute.
    with torch.enable_grad(), torch._C._SetExcludeDispatchKeyGuard(torch._C.DispatchKey.AutogradFunctionality, False):
        args = [None if t is None else (t.transpose(1, 2) if i < len(qkv) else t) for i, t in enumerate(leaves)]
        out = reference(*args).transpose(1, 2)
        grads = iter(torch.autograd.grad(out, [t for t in leaves if t is not None], dout.to(work),
                                         allow_unused=True))
    result = []
    for t, leaf in zip(inputs, leaves):
        g = None if leaf is None else next(grads)
        result.append(None if t is None else (t.new_zeros(t.shape) if g is None else g.to(t.dtype).contiguous()))
    return result
