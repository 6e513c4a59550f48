"""The attention op (armour_kernels.attention) on every backend against python_ref in float64.

Each test runs once per backend ("triton", "cpu", "reference"); Triton runs in the interpreter on
CPU (conftest sets TRITON_INTERPRET=1), fp32 and fp16, small shapes; bf16 and large shapes run only
on a GPU. Inputs are views into packed projections (as in the models), so every kernel reads
through non-trivial strides. The C++ kernels' own sweep (every ISA path, larger shapes) is
test_attention_cpu.py; Triton's launch details are test_attention_triton.py.
"""
import pytest
import torch

from armour_kernels import armour_attention, attention
from attention_checks import reference, run_case
from helpers import assert_close, backend_dtype_params, backend_params, device_for, requires_cuda


# A covering matrix: every value source, bias form, the diagonal mask, N in {1, 7, 197, 260},
# d in {16, 32, 64} (+ 128 and a non power of two), Dk ≠ Dv, Nq ≠ Nk, both interpreter dtypes.
CASES = [
    # value, Nq, Nk, Dk, Dv, dtype, bias, mask_diagonal, key_is_query
    ("v", 7, 7, 16, 16, torch.float32, None, False, False),
    ("q", 197, 197, 64, 0, torch.float32, None, False, False),
    ("q", 7, 7, 32, 0, torch.float16, None, False, False),
    ("k", 260, 260, 32, 0, torch.float16, None, False, False),
    ("k", 7, 7, 16, 0, torch.float32, "dense", False, False),
    ("q+v", 49, 49, 16, 32, torch.float32, "table", False, False),
    ("q+k", 49, 49, 32, 0, torch.float16, "table", False, False),
    ("q+k", 7, 7, 16, 0, torch.float32, "dense", True, False),
    ("v", 16, 49, 16, 64, torch.float32, "table", False, False),  # LeViT subsample: Nq ≠ Nk, Dk ≠ Dv
    ("v", 7, 197, 32, 16, torch.float16, "dense", False, False),
    ("v", 197, 197, 64, 64, torch.float16, None, True, True),  # shared_qk_nodiag: k is q
    ("v", 1, 1, 16, 16, torch.float32, None, True, True),  # N = 1: the diagonal is the only key
    ("q", 1, 1, 64, 0, torch.float16, None, False, False),
    ("v", 7, 7, 128, 32, torch.float32, None, False, False),
    ("q+v", 7, 7, 80, 48, torch.float32, None, True, False),  # non-power-of-two head dims
]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-N{c[1]}x{c[2]}-d{c[3]}/{c[4]}-{str(c[5])[6:]}"
                         f"-{c[6]}-{'nodiag' if c[7] else 'diag'}{'-qk' if c[8] else ''}")
def test_matches_reference(case, backend):
    value, nq, nk, dk, dv, dtype, bias, mask, key_is_query = case
    run_case(backend, value, nq, nk, dk, dv, dtype, bias, mask, key_is_query)


@pytest.mark.parametrize("backend, dtype", backend_dtype_params(
    [torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_every_dtype(backend, dtype):
    """Every dtype a backend takes: a LeViT-style call (table bias, q+v, Dk ≠ Dv), two images."""
    run_case(backend, "q+v", 49, 49, 16, 32, dtype, "table", batch=2)


@pytest.mark.parametrize("backend", backend_params())
def test_diagonal_kept_when_no_other_key_is_finite(backend):
    """Rows whose off-diagonal bias is all -inf keep their diagonal (forward and gradients)."""
    batch, n, heads, d = 1, 9, 2, 16
    device = device_for(backend)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(batch, n, heads, d, generator=gen).to(device).requires_grad_()
    v = torch.randn(batch, n, heads, d, generator=gen).to(device).requires_grad_()
    bias = torch.randn(heads, n, n, generator=gen)
    bias[:, 2, :] = float("-inf")
    bias[:, 2, 2] = 0.5  # row 2: only its diagonal is finite
    bias[1, 5, torch.arange(n) != 5] = float("-inf")
    bias = bias.to(device)
    out = attention(q, q, v, bias=bias, mask_diagonal=True, backend=backend)
    q64, v64 = q.detach().double().requires_grad_(), v.detach().double().requires_grad_()
    expected = reference(q64, q64, v64, "v", bias=bias.double(), mask_diagonal=True)
    assert_close(out, expected, torch.float32, msg="out")
    assert_close(out[:, 2], v[:, 2], torch.float32, msg="fallback row = its own value")
    dout = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (q, v), dout), torch.autograd.grad(expected, (q64, v64), dout.double())):
        assert_close(got, want, torch.float32, msg="grad")


@pytest.mark.parametrize("backend", backend_params())
def test_any_strides_including_the_feature_dim(backend):
    """Feature stride ≠ 1 (a (B, N, D, H) tensor seen as (B, N, H, D)) and a stride-0 gradient (from sum())."""
    gen = torch.Generator().manual_seed(4)
    leaves = [torch.randn(2, 11, 16, 2, generator=gen).to(device_for(backend)).requires_grad_() for _ in range(3)]
    q, k, v = (t.transpose(2, 3) for t in leaves)
    assert q.stride(-1) != 1
    out = attention(q, k, v, value="q+v", backend=backend)
    grads = torch.autograd.grad(out.sum(), leaves)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    q64, k64, v64 = (t.transpose(2, 3) for t in leaves64)
    expected = reference(q64, k64, v64, "q+v")
    assert_close(out, expected, torch.float32)
    for got, want in zip(grads, torch.autograd.grad(expected.sum(), leaves64)):
        assert_close(got, want, torch.float32)


@pytest.mark.parametrize("backend", backend_params())
def test_armour_gradients_add_up_through_q(backend):
    """Armour: q is both query and value; its gradient is the sum of both paths."""
    x = torch.randn(2, 7, 2, 2, 16).to(device_for(backend)).requires_grad_()  # (B, N, 2, H, D): packed [q | k]
    out = armour_attention(x[:, :, 0], x[:, :, 1], backend=backend)
    grad, = torch.autograd.grad(out.square().sum(), x)
    x64 = x.detach().double().requires_grad_()
    expected = reference(x64[:, :, 0], x64[:, :, 1], None, "q")
    grad64, = torch.autograd.grad(expected.square().sum(), x64)
    assert_close(grad, grad64, torch.float32)


# ----------------------------------------------------------------------------- the reference backend

def test_reference_backend_matches():
    q, k, v = torch.randn(3, 1, 9, 2, 16, dtype=torch.float64).unbind(0)
    for value in ("v", "q+v"):
        got = attention(q, k, v, value=value, backend="reference", mask_diagonal=True)
        assert_close(got, reference(q, k, v, value, mask_diagonal=True), torch.float64)


def test_reference_backend_accumulates_half_precision_in_float32():
    x = torch.randn(2, 6, 1, 64, dtype=torch.float16) * 100  # float16 scores overflow: |q·k| ~ 1e5
    out = attention(x, x, x, backend="reference")
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_reference_backend_takes_a_wider_bias():
    q = torch.randn(1, 4, 2, 8)
    bias = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    out = attention(q, q, q, bias=bias, backend="reference")
    out.sum().backward()
    assert out.dtype == torch.float32 and bias.grad.dtype == torch.float64


# ----------------------------------------------------------------------------- GPU only

@requires_cuda
@pytest.mark.parametrize("value", ["v", "q", "q+v"])
def test_bf16_on_gpu(value):
    run_case("triton", value, 197, 197, 64, 64, torch.bfloat16, bias="table" if value == "q+v" else None, batch=2,
             heads=3)


@requires_cuda
@pytest.mark.parametrize("dk,dv,n", [(64, 64, 1024), (128, 128, 2048), (16, 32, 196)])
def test_large_shapes_on_gpu(dk, dv, n):
    run_case("triton", "q" if dk == dv else "v", n, n, dk, dv, torch.float16, batch=2, heads=4)
