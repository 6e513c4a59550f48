"""Nyström attention: the fused Triton kernels (interpreter on CPU) against python_ref in float64,
the op's checks and torch.compile, and the module against nystrom_attention 0.0.14."""
import pytest
import torch

import armour_kernels
from armour_kernels.nn.nystrom import NystromAttention
from armour_kernels.triton.nystrom import PINV_MAX_M
from python_ref.nystrom import nystrom_attention as reference
from tests.conftest import (HAS_CUDA, TRITON_DTYPES, assert_bad_argument, assert_close, assert_no_cpu_kernel_error,
                            requires_cuda)

DEVICE = "cuda" if HAS_CUDA else "cpu"


def _inputs(batch, n, heads, d, dtype, value, scale=1.0):
    """q, k, v as strided views of one packed projection (B, N, 3, H, D), as the layer makes them."""
    qkv = torch.randn(batch, n, 3, heads, d, device=DEVICE) * scale
    q, k, v = (qkv[:, :, i].to(dtype) for i in range(3))
    return q, k, (v if value == "v" else None)


def _conv_weight(heads, taps=33):
    return (torch.randn(heads, 1, taps, 1, device=DEVICE) * 0.2) if taps else None


def _check_against_reference(q, k, v, conv_weight, *, grads=True, **options):
    """Forward and (q, k, v, conv weight) gradients of the fused op vs python_ref in float64."""
    dtype = q.dtype
    ours = [t.detach().requires_grad_() if t is not None else None for t in (q, k, v, conv_weight)]
    refs = [t.detach().double().requires_grad_() if t is not None else None for t in (q, k, v, conv_weight)]
    out = armour_kernels.nystrom_attention(*ours[:3], conv_weight=ours[3], backend="triton", **options)
    expected = reference(*(t.transpose(1, 2) if t is not None else None for t in refs[:3]),
                         conv_weight=refs[3], **options).transpose(1, 2)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out, expected, dtype, msg="out")
    if not grads:
        return
    dout = torch.randn_like(expected)
    out.backward(dout.to(dtype))
    expected.backward(dout)
    for name, mine, ref in zip(("q", "k", "v", "conv_weight"), ours, refs):
        if mine is not None:
            assert mine.grad.dtype == mine.dtype
            assert_close(mine.grad, ref.grad, dtype, msg=f"d{name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n, m, mode, value", [
    (77, 8, "clean", "v"),   # n not divisible by m: 3 padded rows in front
    (64, 8, "seed", "v"),    # divisible: no padding
    (5, 8, "clean", "q"),    # n < m: one token per landmark group at most
    (50, 6, "seed", "q"),
])
def test_matches_reference(n, m, mode, value, dtype):
    q, k, v = _inputs(2, n, 2, 16, dtype, value)
    _check_against_reference(q, k, v, _conv_weight(2), num_landmarks=m, mode=mode, value=value)


def test_without_residual_conv_and_odd_head_dim():
    q, k, v = _inputs(1, 41, 2, 24, torch.float32, "v")
    _check_against_reference(q, k, v, None, num_landmarks=4, mode="clean", value="v")


def test_single_token_and_single_landmark():
    q, k, v = _inputs(1, 1, 2, 16, torch.float32, "v")
    _check_against_reference(q, k, v, _conv_weight(2, 5), num_landmarks=1)
    q, k, v = _inputs(1, 23, 2, 16, torch.float32, "v")
    _check_against_reference(q, k, v, _conv_weight(2, 5), num_landmarks=1, pinv_iterations=3)


def test_many_landmarks_run_the_pinv_in_pytorch():
    q, k, v = _inputs(1, 20, 1, 16, torch.float32, "v")
    _check_against_reference(q, k, v, _conv_weight(1, 3), num_landmarks=PINV_MAX_M + 2, mode="seed")


def test_fp16_inputs_that_overflow_a_naive_exp():
    """Scores of several hundred: exp overflows fp16 (and fp32); the kernels stay finite and exact."""
    q, k, v = _inputs(1, 40, 2, 16, torch.float16, "v", scale=12.0)
    assert torch.isinf(torch.exp((q[:, :1].float() * k.float()).sum(-1) / 4).half()).any()
    _check_against_reference(q, k, v, _conv_weight(2), num_landmarks=8, grads=False)



def test_every_buffer_is_written(monkeypatch):
    """The launchers' torch.empty buffers (outputs, gradients, partial sums) start as NaN."""
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: empty(*a, **kw).fill_(float("nan")))
    q, k, v = _inputs(2, 45, 2, 16, torch.float32, "v")
    _check_against_reference(q, k, v, _conv_weight(2, 5), num_landmarks=4, mode="seed")

def test_torch_compile_fullgraph():
    q, k, v = _inputs(1, 30, 2, 16, torch.float32, "v")
    weight = _conv_weight(2, 5)

    def op(q, k, v, weight):
        return armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, conv_weight=weight, backend="triton")

    compiled = [t.detach().requires_grad_() for t in (q, k, v, weight)]
    out = torch.compile(op, fullgraph=True)(*compiled)
    out.sum().backward()
    eager = [t.detach().requires_grad_() for t in (q, k, v, weight)]
    expected = op(*eager)
    expected.sum().backward()
    torch.testing.assert_close(out, expected)
    for mine, ref in zip(compiled, eager):
        torch.testing.assert_close(mine.grad, ref.grad)


def test_reference_backend_is_python_ref():
    q, k, v = _inputs(1, 10, 2, 16, torch.float32, "v")
    out = armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, backend="reference")
    expected = reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), num_landmarks=4)
    torch.testing.assert_close(out, expected.transpose(1, 2))


@pytest.mark.parametrize("change, error, match", [
    (dict(num_landmarks=0), ValueError, "num_landmarks must be an integer"),
    (dict(num_landmarks=2.5), ValueError, "num_landmarks must be an integer"),
    (dict(pinv_iterations=-1), ValueError, "pinv_iterations must be"),
    (dict(mode="fast"), ValueError, "mode must be one of"),
    (dict(value="k"), ValueError, "value must be one of"),
    (dict(v=None), ValueError, "needs v"),
    (dict(value="q"), ValueError, "uses the query as the value"),
    (dict(k=torch.randn(1, 12, 2, 16)), ValueError, "same sequence length"),
    (dict(k=torch.randn(1, 10, 2, 16, dtype=torch.float64)), TypeError, "but q is"),
    (dict(v=torch.randn(1, 10, 3, 16)), ValueError, "must match k"),
    (dict(q=torch.randn(10, 2, 16)), ValueError, r"must be \(B, N, H, D\)"),
    (dict(conv_weight=torch.randn(2, 1, 32, 1)), ValueError, r"\(H, 1, K, 1\)"),
    (dict(conv_weight=torch.randn(3, 1, 33, 1)), ValueError, r"\(H, 1, K, 1\)"),
    (dict(conv_weight=torch.ones(2, 1, 33, 1, dtype=torch.int64)), TypeError, "conv_weight must be"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
])
def test_bad_arguments(change, error, match):
    args = dict(q=torch.randn(1, 10, 2, 16), k=torch.randn(1, 10, 2, 16), v=torch.randn(1, 10, 2, 16),
                num_landmarks=4, backend="reference")
    assert_bad_argument(armour_kernels.nystrom_attention, args, change, error, match)


def test_auto_backend_on_cpu_without_the_extension_is_a_clear_error():
    q, k, v = _inputs(1, 10, 2, 16, torch.float32, "v")
    assert_no_cpu_kernel_error("nystrom_attention", lambda: armour_kernels.nystrom_attention(q.cpu(), k.cpu(), v.cpu(), num_landmarks=4))


def test_module_matches_nystrom_attention():
    from nystrom_attention import NystromAttention as Original
    torch.manual_seed(0)
    original = Original(dim=32, dim_head=16, heads=2, num_landmarks=8)
    ours = NystromAttention(dim=32, dim_head=16, heads=2, num_landmarks=8, backend="triton")
    ours.load_state_dict(original.state_dict())
    x = torch.randn(2, 37, 32)
    assert_close(ours(x), original(x), torch.float32)


def test_armour_module_has_no_value_projection():
    module = NystromAttention(dim=32, dim_head=16, heads=2, num_landmarks=4, residual_conv_kernel=5, value="q",
                              mode="clean", backend="triton")
    assert module.to_qkv.weight.shape == (2 * 32, 32)
    x = torch.randn(1, 13, 32, requires_grad=True)
    module(x).sum().backward()
    assert module.res_conv.weight.grad is not None and torch.isfinite(x.grad).all()


def test_module_unsupported_options():
    module = NystromAttention(dim=32, dim_head=16, heads=2, num_landmarks=4, backend="reference")
    with pytest.raises(NotImplementedError):
        module(torch.randn(1, 8, 32), mask=torch.ones(1, 8, dtype=torch.bool))
    with pytest.raises(NotImplementedError):
        module(torch.randn(1, 8, 32), return_attn=True)


@requires_cuda
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("value", ["v", "q"])
def test_gpu_paper_shape(dtype, value):
    q, k, v = _inputs(2, 1025, 4, 32, dtype, value)
    _check_against_reference(q, k, v, _conv_weight(4), num_landmarks=64, mode="clean", value=value)
