"""The dense op's input LayerNorm (a pre-norm block's norm as the GEMM's prologue, docs/dense.md) and the
patch_rows op (a patch embedding as GEMM rows): every dispatch path this CPU supports against
PyTorch's LayerNorm + Linear in float64, odd shapes, strided rows, affine or not, NaN / inf rows,
bad arguments, linear_act / mlp with `norm=`, and both ops under torch.compile."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from armour_kernels import cpu
from armour_kernels.ops.linear_act import dense, dense_pack, layer_norm_args, linear_act, mlp, patch_rows

from dense_cases import expected, make
from helpers import assert_close, assert_same_nans_and_close

pytestmark = pytest.mark.skipif(not cpu.has_op("dense"), reason="the C++ extension is not built")

DTYPES = (torch.float32, torch.bfloat16, torch.float64, torch.float16)


def make_norm(K, dtype, *, affine=True, seed=0):
    g = torch.Generator().manual_seed(seed + 7)
    if not affine:
        return None, None, 1e-6
    return (1 + torch.randn(K, generator=g) / 4).to(dtype), torch.randn(K, generator=g).to(dtype), 1e-6


def expected_norm(x, norm, w, b, act, residual):
    """LayerNorm in float64, its output rounded to x's dtype (as a model's LayerNorm output is), then the
    dense definition in float64."""
    weight, bias, eps = norm
    weight = None if weight is None else weight.double()
    bias = None if bias is None else bias.double()
    ln = F.layer_norm(x.double(), (x.shape[-1],), weight, bias, eps).to(x.dtype)
    return expected(ln, w, b, act, False, residual)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", [(0, 16, 32), (1, 16, 16), (197, 192, 384), (33, 100, 70), (16, 384, 96)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_prologue(isa, dtype, M, K, N, affine):
    x, w, b, r = make(M, K, N, dtype, residual=True, seed=M + K)
    x = (x.double() * 3 + 1).to(dtype)  # a mean and a spread to remove
    norm = make_norm(K, dtype, affine=affine)
    y = dense(x, dense_pack(w), b, N, act="gelu", residual=r, norm=norm)
    assert y.shape == (M, N) and y.dtype == dtype
    if M:
        assert_close(y, expected_norm(x, norm, w, b, "gelu", r), dtype, msg=f"{isa} {M}x{K}x{N}")


def test_layer_norm_strided_rows_and_threads(isa):
    """Rows read in place with a row stride, leading dims, one and two threads (the column split)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 300, generator=g)[:, :, 20:212]
    w = torch.randn(130, 192, generator=g) / 14
    norm = make_norm(192, torch.float32)
    want = expected_norm(x, norm, w, None, "none", None)
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            assert_close(dense(x, dense_pack(w), None, 130, norm=norm), want, torch.float32, msg=f"{threads} threads")
        finally:
            torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_layer_norm_nan_and_inf(isa, dtype):
    """A NaN or an infinity anywhere in a row makes that row's LayerNorm, and so its output, NaN (as
    PyTorch's); other rows are untouched."""
    x, w, b, r = make(12, 64, 32, dtype)
    x[2, 5] = float("nan")
    x[4, 60] = float("inf")
    x[6, 0] = float("-inf")
    norm = make_norm(64, dtype)
    y = dense(x, dense_pack(w), b, 32, norm=norm)
    want = expected_norm(x, norm, w, b, "none", None)
    assert want[[2, 4, 6]].isnan().all()
    assert_same_nans_and_close(y, want, dtype, msg=isa)


def test_layer_norm_bad_arguments():
    x, w, b, _ = make(4, 32, 40, torch.float32)
    p = dense_pack(w)
    g, beta, eps = make_norm(32, torch.float32)
    with pytest.raises(RuntimeError, match="norm_weight must be"):
        dense(x, p, b, 40, norm=(g[:31], beta, eps))
    with pytest.raises(TypeError, match="norm_bias dtype"):
        dense(x, p, b, 40, norm=(g, beta.double(), eps))
    with pytest.raises(RuntimeError, match="exclude each other"):
        dense(x, p, b, 40, act_in=True, norm=(g, beta, eps))
    with pytest.raises(RuntimeError, match="need norm_eps"):
        torch.ops.armour_kernels.dense(x, p, b, None, 0, False, 40, g, beta, None)
    with pytest.raises(RuntimeError, match="norm_eps must be"):
        dense(x, p, b, 40, norm=(g, beta, -1.0))
    with pytest.raises(RuntimeError, match="inference-only"):
        dense(x, p, b, 40, norm=(g.clone().requires_grad_(), beta, eps))
    with pytest.raises(ValueError, match="exclude each other"):
        linear_act(x, w, b, act_in=True, norm=(g, beta, eps), packed=p)
    with pytest.raises(TypeError, match="nn.LayerNorm over the last dim"):
        layer_norm_args(torch.nn.LayerNorm((4, 8)))


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "plain"])
def test_linear_act_and_mlp_with_norm(packed):
    """linear_act / mlp with `norm=` equal LayerNorm then the layers, on the dense op (packed weights)
    or any other path; with a gradient wanted the norm is PyTorch's and gradients flow."""
    x, w1, b1, _ = make(20, 48, 96, torch.float32)
    _, w2, b2, _ = make(96, 96, 48, torch.float32, seed=1)
    ln = torch.nn.LayerNorm(48)
    with torch.no_grad():
        ln.weight.normal_(1, 0.2)
        ln.bias.normal_()
    norm = layer_norm_args(ln)
    p1, p2 = (dense_pack(w1), dense_pack(w2)) if packed else (None, None)
    with torch.no_grad():
        h = ln(x)
        assert_close(linear_act(x, w1, b1, act="gelu", norm=norm, packed=p1),
                     expected(h, w1, b1, "gelu", False, None), torch.float32)
        want = expected(F.gelu(F.linear(h, w1, b1)), w2, b2, "none", False, x)
        assert_close(mlp(x, (w1, b1), (w2, b2), act="gelu", norm=norm, residual=x, packed=(p1, p2)), want,
                     torch.float32)
    linear_act(x, w1, b1, norm=norm, packed=p1).sum().backward()
    assert ln.weight.grad is not None


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("shape,patch", [((2, 3, 224, 224), (16, 16)), ((1, 3, 35, 50), (16, 16)),
                                         ((0, 3, 32, 32), (8, 8)), ((3, 1, 4, 6), (2, 3)), ((1, 2, 5, 5), (8, 8))])
def test_patch_rows(dtype, shape, patch):
    """Each row one patch flattened (C, p, q), row-major over the patch grid, a convolution's floor."""
    x = torch.randn(shape).to(dtype)
    y = patch_rows(x, patch)
    (B, C, H, W), (p, q) = shape, patch
    gh, gw = H // p, W // q
    assert y.shape == (B, gh * gw, C * p * q) and y.dtype == dtype and y.is_contiguous()
    for gy in range(min(gh, 2)):
        for gx in range(min(gw, 2)):
            if B:
                assert torch.equal(y[:, gy * gw + gx], x[:, :, gy * p:(gy + 1) * p, gx * q:(gx + 1) * q].flatten(1))
    w = torch.randn(5, C, p, q).to(dtype)
    if B and gh and gw:  # the GEMM over the rows is the convolution
        conv = F.conv2d(x.double(), w.double(), stride=patch).flatten(2).transpose(1, 2)
        assert_close(y.double() @ w.flatten(1).double().t(), conv, torch.float64)


def test_patch_rows_strided_input_and_errors():
    x = torch.randn(2, 224, 224, 3).permute(0, 3, 1, 2)  # channels-last image
    assert torch.equal(patch_rows(x, (16, 16)), patch_rows(x.contiguous(), (16, 16)))
    with pytest.raises(RuntimeError, match=r"must be \(B, C, H, W\)"):
        torch.ops.armour_kernels.patch_rows(x[0], 16, 16)
    with pytest.raises(RuntimeError, match="must be positive"):
        torch.ops.armour_kernels.patch_rows(x, 0, 16)
    with pytest.raises(RuntimeError, match="inference-only"):
        torch.ops.armour_kernels.patch_rows(x.detach().requires_grad_(), 16, 16)
    xg = torch.randn(1, 3, 32, 32, requires_grad=True)  # the functional form: PyTorch's ops, with autograd
    patch_rows(xg, (16, 16)).sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(xg))


def test_norm_and_patch_rows_compile():
    """Both under torch.compile (fullgraph): the dense op with its norm arguments and patch_rows are
    called from the generated code with the results of the eager calls."""
    x = torch.randn(2, 3, 64, 64)
    _, w, b, _ = make(1, 3 * 16 * 16, 32, torch.float32)
    _, w2, _, _ = make(1, 32, 24, torch.float32)
    p, p2 = dense_pack(w), dense_pack(w2)
    norm = make_norm(32, torch.float32)

    def f(x):
        tokens = dense(patch_rows(x, (16, 16)), p, b, 32)
        return dense(tokens, p2, None, 24, norm=norm, residual=None)

    with torch.no_grad():
        torch._dynamo.reset()
        assert_close(torch.compile(f, fullgraph=True)(x), f(x), torch.float32)
