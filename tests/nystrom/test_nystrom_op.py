"""The Nyström op (armour_kernels.nystrom_attention) on every backend against python_ref in float64:
forward and every gradient (q, k, v, the residual conv weight), both pinv scalings, both value
sources, odd shapes, large scores, half precision, strides; the op's argument checks and
torch.compile. Triton runs in the interpreter on CPU (small shapes); the C++ kernels' own sweep
(larger shapes, every ISA, threads) is test_nystrom_cpu.py; Triton's own, test_nystrom_triton.py.
"""
import pytest
import torch

import armour_kernels
from armour_kernels.triton.nystrom import PINV_MAX_M
from helpers import (assert_bad_argument, assert_close, assert_no_cpu_kernel_error, backend_dtype_params,
                     backend_params, device_for)
from linear_attention_checks import nystrom_check, nystrom_inputs, nystrom_pair, random_conv, check_gradients

OP = "nystrom_attention"


@pytest.mark.parametrize("n, m, mode, value", [
    (77, 8, "clean", "v"),   # n not divisible by m: 3 padded rows in front
    (64, 8, "seed", "v"),    # divisible: no padding
    (5, 8, "clean", "q"),    # n < m: one token per landmark group at most
    (50, 6, "seed", "q"),
])
@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.float32, torch.float16], op=OP))
def test_matches_reference(backend, dtype, n, m, mode, value):
    q, k, v = nystrom_inputs(backend, 2, n, 2, 16, dtype, value)
    nystrom_check(backend, q, k, v, random_conv(backend, 2), num_landmarks=m, mode=mode, value=value)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_without_residual_conv_and_odd_head_dim(backend):
    q, k, v = nystrom_inputs(backend, 1, 41, 2, 24, torch.float32, "v")
    nystrom_check(backend, q, k, v, None, num_landmarks=4, mode="clean", value="v")


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_single_token_and_single_landmark(backend):
    q, k, v = nystrom_inputs(backend, 1, 1, 2, 16, torch.float32, "v")
    nystrom_check(backend, q, k, v, random_conv(backend, 2, 5), num_landmarks=1)
    q, k, v = nystrom_inputs(backend, 1, 23, 2, 16, torch.float32, "v")
    nystrom_check(backend, q, k, v, random_conv(backend, 2, 5), num_landmarks=1, pinv_iterations=3)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_many_landmarks(backend):
    """More landmarks than Triton's on-chip pinv takes (there the pinv runs in PyTorch)."""
    q, k, v = nystrom_inputs(backend, 1, 20, 1, 16, torch.float32, "v")
    nystrom_check(backend, q, k, v, random_conv(backend, 1, 3), num_landmarks=PINV_MAX_M + 2, mode="seed")


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_fp16_inputs_that_overflow_a_naive_exp(backend):
    """Scores of several hundred: exp overflows fp16 (and fp32); the kernels stay finite and exact."""
    q, k, v = nystrom_inputs(backend, 1, 40, 2, 16, torch.float16, "v", scale=12.0)
    assert torch.isinf(torch.exp((q[:, :1].float() * k.float()).sum(-1) / 4).half()).any()
    nystrom_check(backend, q, k, v, random_conv(backend, 2), num_landmarks=8, grads=False)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_large_scores_stay_finite(backend):
    """Scores of several hundred overflow a naive exp in fp32: every softmax subtracts its maximum."""
    q, k, v = nystrom_inputs(backend, 1, 40, 2, 16, torch.float32, "v")
    q, k = q * 12, k * 12
    op, ref = nystrom_pair(backend, 8, "seed", "v")
    check_gradients(op, ref, (q, k, v, None), torch.float32)


@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.bfloat16, torch.float16], op=OP))
def test_half_precision_inputs(backend, dtype):
    """bf16 / fp16 in, the same dtype out (and gradients), within that dtype's tolerance."""
    q, k, v = nystrom_inputs(backend, 2, 33, 2, 16, dtype, "v")
    op, ref = nystrom_pair(backend, 8, "clean", "v")
    check_gradients(op, ref, (q, k, v, random_conv(backend, 2, 5).to(dtype)), dtype)


@pytest.mark.parametrize("value", ["v", "q"])
@pytest.mark.parametrize("backend", backend_params(["cpu", "reference"], op=OP))
def test_any_strides_and_a_broadcast_dout(backend, value):
    """Feature stride ≠ 1 (a (B, N, D, H) buffer seen as (B, N, H, D)): the kernels copy such rows
    instead of reading them in place; dout of out.sum() is a stride-0 broadcast."""
    q, k, v = (torch.randn(2, 150, 16, 3, dtype=torch.float64).transpose(2, 3).float() for _ in range(3))
    assert q.stride(3) != 1
    tensors = (q, k, v if value == "v" else None, random_conv(backend, 3, 9))
    op, ref = nystrom_pair(backend, 5, "clean", value)
    check_gradients(op, ref, tensors, torch.float32)
    ours = [None if t is None else t.detach().requires_grad_() for t in tensors]
    refs = [None if t is None else t.detach().double().requires_grad_() for t in tensors]
    op(*ours).sum().backward()
    ref(*refs).sum().backward()
    for mine, expected in zip(ours, refs):
        if mine is not None:
            assert_close(mine.grad, expected.grad, torch.float32)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_empty_batch_returns_empty(backend):
    """B = 0: an empty output and empty gradients."""
    q, k, v = (torch.randn(0, 9, 2, 16, device=device_for(backend), requires_grad=True) for _ in range(3))
    out = armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, backend=backend)
    assert out.shape == (0, 9, 2, 16)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(g.shape == t.shape for g, t in zip(grads, (q, k, v)))
    q = torch.randn(0, 16, 2, 8, device=device_for(backend))
    assert armour_kernels.nystrom_attention(q, q, q, num_landmarks=4, backend=backend).shape == (0, 16, 2, 8)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_torch_compile_fullgraph(backend):
    q, k, v = nystrom_inputs(backend, 1, 30, 2, 16, torch.float32, "v")
    weight = random_conv(backend, 2, 5)

    def op(q, k, v, weight):
        return armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, conv_weight=weight, backend=backend)

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
    from python_ref.nystrom import nystrom_attention as reference
    q, k, v = nystrom_inputs("reference", 1, 10, 2, 16, torch.float32, "v")
    out = armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, backend="reference")
    expected = reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), num_landmarks=4)
    torch.testing.assert_close(out, expected.transpose(1, 2))


# ----------------------------------------------------------------------------- arguments

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
@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_bad_arguments(backend, change, error, match):
    """The op checks its arguments before it picks a kernel: the same error on every backend."""
    args = dict(q=torch.randn(1, 10, 2, 16), k=torch.randn(1, 10, 2, 16), v=torch.randn(1, 10, 2, 16),
                num_landmarks=4, backend=backend)
    assert_bad_argument(armour_kernels.nystrom_attention, args, change, error, match)


def test_auto_backend_on_cpu_without_the_extension_is_a_clear_error():
    q, k, v = nystrom_inputs("cpu", 1, 10, 2, 16, torch.float32, "v")
    assert_no_cpu_kernel_error(OP, lambda: armour_kernels.nystrom_attention(q, k, v, num_landmarks=4))
