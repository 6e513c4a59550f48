"""The attention op at its edges, on every backend: fully and partly masked rows, broadcast-bias
gradients, the LeViT table with masked entries, nothing to attend (empty inputs, no keys).

docs/numerics.md: a query row whose every score is -inf outputs 0 and contributes no gradient;
every other number is unchanged and finite. The float64 reference is python_ref on the same
inputs with such rows given a finite bias and their output zeroed (attention_checks.masked_reference).
The C++ kernels' masked rows on every ISA path are in test_attention_cpu.py.
"""
import pytest
import torch

from armour_kernels import attention
from attention_checks import check_masked, qkv_leaves
from helpers import backend_dtype_params, backend_params, device_for

NEG = float("-inf")


@pytest.mark.parametrize("value", ["v", "q", "q+v"])
@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.float32, torch.float16]))
def test_fully_and_partly_masked_rows_dense_bias(backend, dtype, value):
    n, heads = 21, 2
    bias = torch.randn(heads, n, n, generator=torch.Generator().manual_seed(1))
    bias[0, 3] = NEG                  # fully masked row, head 0
    bias[:, 17] = NEG                 # fully masked row, both heads
    bias[1, 5, :9] = NEG              # partly masked
    out, _ = check_masked(backend, value, bias, dtype)
    assert (out[:, 17] == 0).all() and (out[:, 3, 0] == 0).all()


@pytest.mark.parametrize("backend", backend_params())
def test_masked_rows_leave_other_gradients_unchanged(backend):
    """A fully masked row changes nothing else: gradients of k, v equal those with the row's dO = 0."""
    n, heads = 21, 2
    bias = torch.randn(heads, n, n, generator=torch.Generator().manual_seed(2))
    bias[:, 4] = NEG
    bias = bias.to(device_for(backend))
    q, k, v = qkv_leaves(2, n, heads, 16, torch.float32, device=device_for(backend))
    out = attention(q, k, v, bias=bias, backend=backend)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    dout_zero = dout.clone()
    dout_zero[:, 4] = 0
    again = torch.autograd.grad(attention(q, k, v, bias=bias, backend=backend), (q, k, v), dout_zero)
    for a, b in zip(got, again):
        torch.testing.assert_close(a, b)
    assert (got[0][:, 4] == 0).all()  # no gradient reaches the masked query row


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("backend", backend_params())
def test_fully_masked_rows_through_the_levit_table(backend, deterministic):
    n, heads, entries = 21, 2, 13
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(heads, entries, generator=gen)
    table[1, 4] = NEG
    table[:, 7] = NEG
    index = torch.randint(0, entries, (n, n), generator=gen)
    index[6] = 4          # row 6: fully masked in head 1 only
    index[9] = 7          # row 9: fully masked in both heads
    index[11, :5] = 7     # partly masked
    torch.use_deterministic_algorithms(deterministic)
    try:
        check_masked(backend, "q+v", table, index=index)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("shape", [(2, 21, 21), (21, 21), (1, 2, 21, 21), (3, 1, 21, 21), (3, 2, 1, 21),
                                   (2, 21, 1), (3, 2, 21, 21)])
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("backend", backend_params())
def test_broadcast_bias_gradient_has_the_bias_shape(backend, deterministic, shape):
    bias = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    torch.use_deterministic_algorithms(deterministic)
    try:
        _, grads = check_masked(backend, "v", bias, batch=3)
    finally:
        torch.use_deterministic_algorithms(False)
    assert grads[-1].shape == bias.shape


# ----------------------------------------------------------------------------- empty in, empty out

EMPTY_SHAPES = [((0, 5, 2, 8), (0, 5, 2, 8)), ((2, 0, 2, 8), (2, 5, 2, 8)), ((2, 5, 0, 8), (2, 5, 0, 8)),
                ((2, 5, 2, 8), (2, 0, 2, 8))]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shapes", EMPTY_SHAPES, ids=["B=0", "Nq=0", "H=0", "Nk=0"])
def test_attention_with_nothing_to_attend(shapes, backend):
    q_shape, k_shape = shapes
    device = device_for(backend)
    q = torch.randn(*q_shape, device=device, requires_grad=True)
    k = torch.randn(*k_shape, device=device, requires_grad=True)
    v = torch.randn(*k_shape[:3], 6, device=device, requires_grad=True)
    out = attention(q, k, v, backend=backend)
    assert out.shape == (*q_shape[:3], 6) and not out.any()  # zeros, like SDPA, when there are no keys
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.shape == t.shape and not t.grad.any()
