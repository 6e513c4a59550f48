"""The attention op through autograd against python_ref in float64, shared by the tests of
tests/attention/: inputs as strided views of packed projections, as the models pass them."""
import torch

import python_ref
from armour_kernels import attention
from helpers import assert_close, device_for


def make_leaves(batch, nq, nk, heads, dk, dv, dtype, bias=None, seed=0, device="cpu"):
    """Leaf tensors: one packed (B, Nk, H, 2·Dk + Dv + 3) projection, and a separate query source when Nq ≠ Nk."""
    gen = torch.Generator().manual_seed(seed)
    leaves = {"packed": torch.randn(batch, nk, heads, 2 * dk + dv + 3, generator=gen)}
    if nq != nk:
        leaves["queries"] = torch.randn(batch, nq, heads, dk + 5, generator=gen)
    if bias == "dense":
        leaves["bias"] = torch.randn(heads, nq, nk, generator=gen)  # broadcast over the batch
    if bias == "table":
        leaves["bias"] = torch.randn(heads, 13, generator=gen)
    return {name: t.to(device, dtype).requires_grad_() for name, t in leaves.items()}


def split(leaves, dk, dv):
    """q, k, v as strided views of the leaves (never contiguous)."""
    packed = leaves["packed"]
    k, v = packed[..., dk:2 * dk], packed[..., 2 * dk:2 * dk + dv]
    q = leaves["queries"][..., :dk] if "queries" in leaves else packed[..., :dk]
    return q, k, v


def reference(q, k, v, value, bias=None, bias_index=None, mask_diagonal=False):
    """python_ref in its (B, H, N, D) layout, back to (B, N, H, D)."""
    if bias is not None and bias_index is not None:
        bias = python_ref.levit_bias(bias, bias_index)

    def heads_first(t):
        return t.transpose(1, 2) if t is not None else None

    out = python_ref.attention(heads_first(q), heads_first(k), heads_first(v), value=value, bias=bias,
                               mask_diagonal=mask_diagonal)
    return out.transpose(1, 2)


def run_case(backend, value, nq, nk, dk, dv, dtype, bias=None, mask_diagonal=False, key_is_query=False, batch=1,
             heads=2):
    """Forward and the gradients of every leaf through the op on `backend`, against python_ref in float64."""
    device = device_for(backend)
    leaves = make_leaves(batch, nq, nk, heads, dk, dv, dtype, bias, device=device)
    index = None
    if bias == "table":
        index = torch.randint(0, 13, (nq, nk), generator=torch.Generator().manual_seed(1)).to(device)
    leaves64 = {name: t.detach().double().requires_grad_() for name, t in leaves.items()}

    def call(fn, ls):
        q, k, v = split(ls, dk, dv)
        if key_is_query:
            k = q
        return fn(q, k, v if "v" in value else None, value=value, bias=ls.get("bias"), bias_index=index,
                  mask_diagonal=mask_diagonal)

    out = call(lambda *a, **kw: attention(*a, backend=backend, **kw), leaves)
    expected = call(reference, leaves64)
    assert out.shape == expected.shape and out.dtype == dtype
    # The kernels write a contiguous (B, N, H, D) output; the reference backend returns python_ref's
    # (B, H, N, D) result transposed, a view.
    assert out.is_contiguous() or backend == "reference"
    assert_close(out, expected, dtype, msg="out")

    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    names = list(leaves)
    grads = torch.autograd.grad(out, [leaves[n] for n in names], dout)
    grads64 = torch.autograd.grad(expected, [leaves64[n] for n in names], dout.double())
    for name, got, want in zip(names, grads, grads64):
        assert got.dtype == dtype
        assert_close(got, want, dtype, scale=2.0, msg=f"grad {name}")


# ----------------------------------------------------------------------------- fully masked rows

def masked_reference(q, k, v, value, bias):
    """python_ref with fully masked rows defined as docs/numerics.md does: a query row whose every
    score is -inf outputs 0 and contributes no gradient (python_ref itself gives NaN there), so
    such rows get a finite bias and their output zeroed."""
    b4 = bias[(None,) * (4 - bias.dim())]
    empty = torch.isneginf(b4).all(-1, keepdim=True)  # (·, ·, Nq, 1)
    safe = torch.where(empty, torch.zeros_like(b4), b4)
    out = python_ref.attention(_heads_first(q), _heads_first(k), _heads_first(v), value=value, bias=safe)
    empty = empty.expand(q.shape[0], q.shape[2], q.shape[1], 1)
    return torch.where(empty, torch.zeros_like(out), out).transpose(1, 2)


def _heads_first(t):
    return t.transpose(1, 2) if t is not None else None


def qkv_leaves(batch, n, heads, d, dtype, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, heads, d, generator=gen).to(device, dtype).requires_grad_() for _ in range(3)]


def check_masked(backend, value, bias, dtype=torch.float32, index=None, batch=2, n=21, heads=2, d=16):
    """Forward and every gradient of the op on `backend` against the masked reference."""
    device = device_for(backend)
    q, k, v = qkv_leaves(batch, n, heads, d, dtype, device=device)
    bias = bias.to(device).requires_grad_()
    index = None if index is None else index.to(device)
    vv = v if "v" in value else None
    out = attention(q, k, vv, value=value, bias=bias, bias_index=index, backend=backend)
    leaves = [q, k] + ([v] if vv is not None else []) + [bias]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    q64, k64 = ref_leaves[:2]
    v64 = ref_leaves[2] if vv is not None else None
    dense64 = python_ref.levit_bias(ref_leaves[-1], index) if index is not None else ref_leaves[-1]
    expected = masked_reference(q64, k64, v64, value, dense64)
    assert_close(out, expected, dtype, msg="out")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(device, dtype)
    grads = torch.autograd.grad(out, leaves, dout)
    want = torch.autograd.grad(expected, ref_leaves, dout.double())
    for i, (got, ref) in enumerate(zip(grads, want)):
        assert got.shape == leaves[i].shape
        assert torch.isfinite(got).all(), f"grad {i}: not finite"
        assert_close(got, ref, dtype, scale=2.0, msg=f"grad {i}")
    return out, grads
