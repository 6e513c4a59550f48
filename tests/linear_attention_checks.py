"""The Nyström and Performer ops through autograd against python_ref in float64, shared by the tests
of tests/nystrom/ and tests/performer/: inputs as strided views of one packed projection (as the
layers make them), the forward and the gradient of every input (q, k, v, the residual conv weight)
compared with the per-dtype tolerances of helpers.TOLERANCES."""
import sys

import pytest
import torch

import armour_kernels
from helpers import assert_close, assert_same_nans_and_close, device_for
from python_ref.nystrom import nystrom_attention as nystrom_reference
from python_ref.performer import default_num_features, gaussian_orthogonal_random_matrix
from python_ref.performer import performer_attention as performer_reference

INPUT_NAMES = ("q", "k", "v", "conv_weight")


def packed_qkv(backend, batch, n, heads, d, dtype, value, *, nk=None, scale=1.0):
    """q, k, v as strided views of one packed projection (B, N, 3, H, D) in `dtype` (cast before
    slicing, so the views keep the packed strides); k and v are its first nk tokens when nk ≠ n;
    v is None when the query is the value."""
    nk = n if nk is None else nk
    packed = (torch.randn(batch, max(n, nk), 3, heads, d, dtype=torch.float64) * scale).to(device_for(backend), dtype)
    q, k, v = packed[:, :n, 0], packed[:, :nk, 1], packed[:, :nk, 2]
    return q, k, (v if value == "v" else None)


def random_conv(backend, heads, taps=33, dtype=torch.float32):
    """The residual depthwise conv weight (H, 1, K, 1), or None for taps = 0 (no residual)."""
    if not taps:
        return None
    return (torch.randn(heads, 1, taps, 1, dtype=torch.float64) * 0.2).to(device_for(backend), dtype)


def random_projection(backend, d, m=None):
    """Performer's (m, d) orthogonal random features; m defaults to performer-pytorch's choice for d."""
    return gaussian_orthogonal_random_matrix(m or default_num_features(d), d).to(device_for(backend))


def _heads_first(t):
    return None if t is None else t.transpose(1, 2)


def nystrom_pair(backend, num_landmarks, mode="clean", value="v", **options):
    """(the op on `backend`, python_ref) for one Nyström configuration, both f(q, k, v, conv_weight)
    in the op's (B, N, H, D) layout."""
    def op(q, k, v, conv_weight):
        return armour_kernels.nystrom_attention(q, k, v, num_landmarks=num_landmarks, mode=mode, value=value,
                                                conv_weight=conv_weight, backend=backend, **options)

    def ref(q, k, v, conv_weight):
        return nystrom_reference(_heads_first(q), _heads_first(k), _heads_first(v), num_landmarks=num_landmarks,
                                 mode=mode, value=value, conv_weight=conv_weight, **options).transpose(1, 2)
    return op, ref


def performer_pair(backend, projection, kernel="softmax", mode="clean", value="v"):
    """(the op on `backend`, python_ref with the projection in float64) for one Performer
    configuration, both f(q, k, v) in the op's (B, N, H, D) layout."""
    def op(q, k, v):
        return armour_kernels.performer_attention(q, k, v, projection=projection, kernel=kernel, mode=mode,
                                                  value=value, backend=backend)

    def ref(q, k, v):
        return performer_reference(_heads_first(q), _heads_first(k), _heads_first(v), projection=projection.double(),
                                   kernel=kernel, mode=mode, value=value).transpose(1, 2)
    return op, ref


def _leaves(tensors, dtype=None):
    """Fresh leaves (detached, same strides; float64 copies when dtype is given), None kept as None."""
    return [None if t is None else (t.detach() if dtype is None else t.detach().to(dtype)).requires_grad_()
            for t in tensors]


def check_gradients(op, ref, tensors, dtype, grads=True):
    """op(*tensors) against ref on float64 copies: the output, then (grads) the gradient of every
    input for a random output gradient; each in its input's dtype and shape, nothing NaN."""
    ours, refs = _leaves(tensors), _leaves(tensors, torch.float64)
    out = op(*ours)
    expected = ref(*refs)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out, expected, dtype, msg="out")
    if not grads:
        return
    dout = torch.randn_like(expected)
    out.backward(dout.to(dtype))
    expected.backward(dout)
    for name, mine, want in zip(INPUT_NAMES, ours, refs):
        if mine is not None:
            assert mine.grad.dtype == mine.dtype and mine.grad.shape == mine.shape, name
            assert_close(mine.grad, want.grad, dtype, msg=f"d{name}")


def poisoned(tensors, name, index, x):
    """A copy of `tensors` (q, k, v[, conv weight]) with element `index` of input `name` set to x."""
    out = list(tensors)
    i = INPUT_NAMES.index(name)
    out[i] = out[i].detach().clone()
    out[i][index] = x
    return out


def check_nan_positions(op, ref, tensors, dtype, grads_cover=False, grads=True):
    """NaN in, NaN out: op(*tensors) and the gradient of every input are NaN exactly where the
    float64 reference's are, and within the dtype's tolerance elsewhere. grads_cover: the gradients
    are only required to be NaN wherever the reference's are (where more NaN is expected). grads=False:
    the output only (where a gradient's NaN goes depends on which element wins a max)."""
    ours, refs = _leaves(tensors), _leaves(tensors, torch.float64)
    out = op(*ours)
    expected = ref(*refs)
    assert_same_nans_and_close(out, expected, dtype, "out")
    if not grads:
        return
    dout = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mine = [t for t in ours if t is not None]
    theirs = [t for t in refs if t is not None]
    grads = torch.autograd.grad(out, mine, dout.to(dtype))
    want = torch.autograd.grad(expected, theirs, dout)
    for name, got, ref_grad in zip(INPUT_NAMES, grads, want):
        if grads_cover:
            assert got.isnan()[ref_grad.isnan()].all(), f"d{name}: a NaN of the reference's is missing"
        else:
            assert_same_nans_and_close(got, ref_grad, dtype, f"d{name}", scale=2.0)


def check_sum_gradients(op, ref, tensors, dtype):
    """The gradients of op(*tensors).sum() (whose output gradient is a stride-0 broadcast) against ref's."""
    ours, refs = _leaves(tensors), _leaves(tensors, torch.float64)
    op(*ours).sum().backward()
    ref(*refs).sum().backward()
    for name, mine, want in zip(INPUT_NAMES, ours, refs):
        if mine is not None:
            assert_close(mine.grad, want.grad, dtype, msg=f"d{name}")


def nystrom_check(backend, q, k, v, conv_weight, *, grads=True, **options):
    """The Nyström op on `backend` against python_ref: forward and (grads) every gradient."""
    op, ref = nystrom_pair(backend, **options)
    check_gradients(op, ref, (q, k, v, conv_weight), q.dtype, grads)


def performer_check(backend, q, k, v, projection, *, grads=True, **options):
    """The Performer op on `backend` against python_ref: forward and (grads) the q, k, v gradients."""
    op, ref = performer_pair(backend, projection, **options)
    check_gradients(op, ref, (q, k, v), q.dtype, grads)


def check_empty_batch(op, backend):
    """B = 0: `op(q, k, v)` gives an empty output and empty gradients."""
    q, k, v = (torch.randn(0, 9, 2, 16, device=device_for(backend), requires_grad=True) for _ in range(3))
    out = op(q, k, v)
    assert out.shape == (0, 9, 2, 16)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(g.shape == t.shape for g, t in zip(grads, (q, k, v)))


def check_compiled_matches_eager(op, tensors):
    """`op(*tensors)` under torch.compile(fullgraph=True): the same output and gradients as eager
    (the launchers honour the op's fake kernels: shapes, contiguous gradients)."""
    compiled = [t.detach().requires_grad_() for t in tensors]
    out = torch.compile(op, fullgraph=True)(*compiled)
    out.sum().backward()
    eager = [t.detach().requires_grad_() for t in tensors]
    expected = op(*eager)
    expected.sum().backward()
    torch.testing.assert_close(out, expected)
    for mine, ref in zip(compiled, eager):
        torch.testing.assert_close(mine.grad, ref.grad)


def _package_functions_called(fn):
    """fn()'s result and the names of the armour_kernels Python functions it called (sys.setprofile)."""
    called = []

    def profile(frame, event, _arg):
        if event == "call" and "armour_kernels" in frame.f_code.co_filename:
            called.append(frame.f_code.co_name)
    sys.setprofile(profile)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
    return result, called


def check_dispatcher_op(family, forward_args):
    """armour_kernels::<family>_fwd on CPU leaves `forward_args` (q, k, v, ...): declared without a
    backend argument; its forward and backward run on C++ alone (the kernels and the autograd: no
    armour_kernels Python function is called); a second-order gradient through it is an error."""
    op = getattr(torch.ops.armour_kernels, f"{family}_fwd").default
    assert "backend" not in str(op._schema)
    outputs, called = _package_functions_called(lambda: op(*forward_args))
    assert not called, called
    leaves = [t for t in forward_args[:3] if isinstance(t, torch.Tensor)]
    _, called = _package_functions_called(lambda: outputs[0].sum().backward())
    assert not called, called
    assert all(t.grad is not None and t.grad.shape == t.shape for t in leaves)
    (dq,) = torch.autograd.grad(op(*forward_args)[0].sum(), leaves[0], create_graph=True)
    with pytest.raises(RuntimeError, match=f"{family}_bwd is not implemented"):
        dq.sum().backward()
