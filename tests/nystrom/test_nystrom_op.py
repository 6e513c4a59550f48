"""The Nyström op (armour_kernels.nystrom_attention) on every backend against python_ref in float64:
forward and every gradient (q, k, v, the residual conv weight), both pinv scalings, both value
sources, odd shapes, large scores, half precision, strides, every buffer written; the op's argument
checks and torch.compile. Triton runs in the interpreter on CPU (small shapes); larger shapes and
bf16 on a GPU. The C++ kernels' own sweep (more shapes, every ISA, threads) is test_nystrom_cpu.py;
the module, test_nystrom_module.py.
"""
import pytest
import torch

import armour_kernels
from armour_kernels.triton.nystrom import PINV_MAX_M
from helpers import (TRITON_DTYPES, assert_bad_argument, assert_no_cpu_kernel_error, backend_dtype_params,
                     backend_params, device_for, requires_cuda)
from linear_attention_checks import (check_compiled_matches_eager, check_empty_batch, check_gradients,
                                     check_sum_gradients, nystrom_check, nystrom_pair, packed_qkv, random_conv)

OP = "nystrom_attention"


@pytest.mark.parametrize("n, m, mode, value", [
    (77, 8, "clean", "v"),   # n not divisible by m: 3 padded rows in front
    (64, 8, "seed", "v"),    # divisible: no padding
    (5, 8, "clean", "q"),    # n < m: one token per landmark group at most
    (50, 6, "seed", "q"),
])
@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.float32, torch.float16], op=OP))
def test_matches_reference(backend, dtype, n, m, mode, value):
    q, k, v = packed_qkv(backend, 2, n, 2, 16, dtype, value)
    nystrom_check(backend, q, k, v, random_conv(backend, 2), num_landmarks=m, mode=mode, value=value)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_without_residual_conv_and_odd_head_dim(backend):
    q, k, v = packed_qkv(backend, 1, 41, 2, 24, torch.float32, "v")
    nystrom_check(backend, q, k, v, None, num_landmarks=4, mode="clean", value="v")


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_single_token_and_single_landmark(backend):
    q, k, v = packed_qkv(backend, 1, 1, 2, 16, torch.float32, "v")
    nystrom_check(backend, q, k, v, random_conv(backend, 2, 5), num_landmarks=1)
    q, k, v = packed_qkv(backend, 1, 23, 2, 16, torch.float32, "v")
    nystrom_check(backend, q, k, v, random_conv(backend, 2, 5), num_landmarks=1, pinv_iterations=3)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_many_landmarks(backend):
    """More landmarks than Triton's on-chip pinv takes (there the pinv runs in PyTorch)."""
    q, k, v = packed_qkv(backend, 1, 20, 1, 16, torch.float32, "v")
    nystrom_check(backend, q, k, v, random_conv(backend, 1, 3), num_landmarks=PINV_MAX_M + 2, mode="seed")


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_fp16_inputs_that_overflow_a_naive_exp(backend):
    """Scores of several hundred: exp overflows fp16 (and fp32); the kernels stay finite and exact."""
    q, k, v = packed_qkv(backend, 1, 40, 2, 16, torch.float16, "v", scale=12.0)
    assert torch.isinf(torch.exp((q[:, :1].float() * k.float()).sum(-1) / 4).half()).any()
    nystrom_check(backend, q, k, v, random_conv(backend, 2), num_landmarks=8, grads=False)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_large_scores_stay_finite(backend):
    """Scores of several hundred overflow a naive exp in fp32: every softmax subtracts its maximum,
    forward and backward."""
    q, k, v = packed_qkv(backend, 1, 40, 2, 16, torch.float32, "v")
    nystrom_check(backend, q * 12, k * 12, v, None, num_landmarks=8, mode="seed")


@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.bfloat16, torch.float16], op=OP))
def test_half_precision_inputs(backend, dtype):
    """bf16 / fp16 in (the conv weight too), the same dtype out (and gradients), within that dtype's tolerance."""
    q, k, v = packed_qkv(backend, 2, 33, 2, 16, dtype, "v")
    nystrom_check(backend, q, k, v, random_conv(backend, 2, 5, dtype), num_landmarks=8, mode="clean")


# Not Triton: its launchers read any strides through pointers, and N = 150 (several blocks of the C++
# kernels' token loop) costs ~10 s in the interpreter.
@pytest.mark.parametrize("value", ["v", "q"])
@pytest.mark.parametrize("backend", backend_params(["cpu", "reference"], op=OP))
def test_any_strides_and_a_broadcast_dout(backend, value):
    """Feature stride ≠ 1 (a (B, N, D, H) buffer seen as (B, N, H, D)): the kernels copy such rows
    instead of reading them in place; dout of out.sum() is a stride-0 broadcast."""
    q, k, v = (torch.randn(2, 150, 16, 3).to(device_for(backend)).transpose(2, 3) for _ in range(3))
    assert q.stride(3) != 1
    tensors = (q, k, v if value == "v" else None, random_conv(backend, 3, 9))
    op, ref = nystrom_pair(backend, 5, "clean", value)
    check_gradients(op, ref, tensors, torch.float32)
    check_sum_gradients(op, ref, tensors, torch.float32)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_every_buffer_is_written(monkeypatch, backend):
    """The launchers' torch.empty buffers (outputs, gradients, partial sums) start as NaN."""
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: empty(*a, **kw).fill_(float("nan")))
    q, k, v = packed_qkv(backend, 2, 45, 2, 16, torch.float32, "v")
    nystrom_check(backend, q, k, v, random_conv(backend, 2, 5), num_landmarks=4, mode="seed")


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_empty_batch_returns_empty(backend):
    check_empty_batch(lambda q, k, v: armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, backend=backend),
                      backend)


# The reference backend is plain PyTorch, which torch.compile would trace and inductor compile: slow,
# and not the custom ops' fake kernels this checks.
@pytest.mark.parametrize("backend", backend_params(["triton", "cpu"], op=OP))
def test_torch_compile_fullgraph(backend):
    def op(q, k, v, weight):
        return armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, conv_weight=weight, backend=backend)
    q, k, v = packed_qkv(backend, 1, 30, 2, 16, torch.float32, "v")
    check_compiled_matches_eager(op, (q, k, v, random_conv(backend, 2, 5)))


def test_reference_backend_is_python_ref():
    from python_ref.nystrom import nystrom_attention as reference
    q, k, v = packed_qkv("reference", 1, 10, 2, 16, torch.float32, "v")
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
    (dict(conv_weight=torch.randn(2, 1, 4, 1)), ValueError, r"\(H, 1, K, 1\)"),
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
    q, k, v = packed_qkv("cpu", 1, 10, 2, 16, torch.float32, "v")
    assert_no_cpu_kernel_error(OP, lambda: armour_kernels.nystrom_attention(q, k, v, num_landmarks=4))


# ----------------------------------------------------------------------------- GPU only

@requires_cuda
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("value", ["v", "q"])
def test_gpu_paper_shape(dtype, value):
    q, k, v = packed_qkv("triton", 2, 1025, 4, 32, dtype, value)
    nystrom_check("triton", q, k, v, random_conv("triton", 4), num_landmarks=64, mode="clean", value=value)
