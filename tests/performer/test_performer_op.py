"""The Performer (FAVOR+) op (armour_kernels.performer_attention) on every backend against python_ref
in float64: forward and the q, k, v gradients, both feature kernels, both key stabilisers, both value
sources, odd shapes, more features than one on-chip chunk, Nq ≠ Nk, large scores, half precision,
strides, every buffer written; the op's argument checks and torch.compile. Triton runs in the
interpreter on CPU (small shapes); larger shapes and bf16 on a GPU. The C++ kernels' own sweep
(more shapes, every ISA, threads) is test_performer_cpu.py; the module, test_performer_module.py.
"""
import pytest
import torch

import armour_kernels
from helpers import (TRITON_DTYPES, assert_bad_argument, assert_no_cpu_kernel_error, backend_dtype_params,
                     backend_params, device_for, requires_cuda)
from linear_attention_checks import (check_compiled_matches_eager, check_empty_batch, check_gradients,
                                     check_sum_gradients, packed_qkv, performer_check, performer_pair,
                                     random_projection)

OP = "performer_attention"


@pytest.mark.parametrize("value", ["v", "q"])
@pytest.mark.parametrize("mode", ["clean", "seed"])
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.float32, torch.float16], op=OP))
def test_matches_reference(backend, dtype, kernel, mode, value):
    q, k, v = packed_qkv(backend, 2, 77, 2, 16, dtype, value)
    performer_check(backend, q, k, v, random_projection(backend, 16), kernel=kernel, mode=mode, value=value)


@pytest.mark.parametrize("n, d, m", [(1, 16, 44), (197, 32, 110), (33, 16, 7)])
@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_odd_shapes(backend, n, d, m):
    q, k, v = packed_qkv(backend, 1, n, 2, d, torch.float32, "v")
    performer_check(backend, q, k, v, random_projection(backend, d, m), kernel="softmax", mode="clean", value="v")


@pytest.mark.parametrize("d, m, value", [(64, 266, "v"), (16, 300, "q")])
@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_many_features(backend, d, m, value):
    """performer-pytorch's default for dim_head 64 is m = 266: more features than one on-chip chunk
    of the Triton kernels, which run them in chunks."""
    q, k, v = packed_qkv(backend, 1, 20, 2, d, torch.float32, value, scale=0.5)
    performer_check(backend, q, k, v, random_projection(backend, d, m), kernel="softmax", mode="seed", value=value)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_query_and_key_lengths_differ(backend):
    q, k, v = packed_qkv(backend, 1, 19, 2, 16, torch.float32, "v", nk=50)
    performer_check(backend, q, k, v, random_projection(backend, 16), kernel="softmax", mode="seed", value="v")


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.float16], op=OP))
def test_fp16_inputs_that_overflow_a_naive_exp(backend, dtype, kernel):
    """|u| ≈ 100: exp(u) is inf in fp16 (and fp32); the stabilisers and fp32 math keep it finite."""
    q, k, v = packed_qkv(backend, 1, 40, 2, 16, dtype, "v", scale=30.0)
    projection = random_projection(backend, 16)
    assert torch.isinf(torch.exp((q.float() * 16 ** -0.25) @ projection.T).half()).any()
    performer_check(backend, q, k, v, projection, kernel=kernel, mode="clean", value="v")


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_large_scores_stay_finite(backend):
    """Random-feature exponents of tens overflow a naive exp in fp32: the stabilisers subtract their
    maxima, forward and backward."""
    q, k, v = packed_qkv(backend, 1, 40, 2, 16, torch.float32, "v")
    performer_check(backend, q * 2, k * 2, v, random_projection(backend, 16, 20), kernel="softmax", mode="clean")


@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.bfloat16, torch.float16], op=OP))
def test_half_precision_inputs(backend, dtype):
    """bf16 / fp16 in, the same dtype out (and gradients), within that dtype's tolerance."""
    q, k, v = packed_qkv(backend, 2, 33, 2, 16, dtype, "v")
    performer_check(backend, q, k, v, random_projection(backend, 16, 20), kernel="softmax", mode="seed")


# Not Triton: its launchers read any strides through pointers, and N = 150 (several blocks of the C++
# kernels' token loop) is slow in the interpreter.
@pytest.mark.parametrize("value", ["v", "q"])
@pytest.mark.parametrize("backend", backend_params(["cpu", "reference"], op=OP))
def test_any_strides_and_a_broadcast_dout(backend, value):
    """Feature stride ≠ 1 (a (B, N, D, H) buffer seen as (B, N, H, D)): the kernels copy such rows
    instead of reading them in place; dout of out.sum() is a stride-0 broadcast."""
    q, k, v = (torch.randn(2, 150, 16, 3).to(device_for(backend)).transpose(2, 3) for _ in range(3))
    assert q.stride(3) != 1
    tensors = (q, k, v if value == "v" else None)
    op, ref = performer_pair(backend, random_projection(backend, 16, 20), "softmax", "seed", value)
    check_gradients(op, ref, tensors, torch.float32)
    check_sum_gradients(op, ref, tensors, torch.float32)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_every_buffer_is_written(monkeypatch, backend):
    """The launchers' torch.empty buffers (outputs, gradients, partial sums) start as NaN."""
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: empty(*a, **kw).fill_(float("nan")))
    q, k, v = packed_qkv(backend, 2, 45, 2, 16, torch.float32, "v")
    performer_check(backend, q, k, v, random_projection(backend, 16), kernel="softmax", mode="seed", value="v")


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_empty_batch_returns_empty(backend):
    projection = random_projection(backend, 16)
    check_empty_batch(lambda q, k, v: armour_kernels.performer_attention(q, k, v, projection=projection,
                                                                         backend=backend), backend)


# The reference backend is plain PyTorch, which torch.compile would trace and inductor compile: slow,
# and not the custom ops' fake kernels this checks.
@pytest.mark.parametrize("backend", backend_params(["triton", "cpu"], op=OP))
def test_torch_compile_fullgraph(backend):
    projection = random_projection(backend, 16)

    def op(q, k, v):
        return armour_kernels.performer_attention(q, k, v, projection=projection, backend=backend)
    check_compiled_matches_eager(op, packed_qkv(backend, 1, 30, 2, 16, torch.float32, "v"))


def test_reference_backend_is_python_ref():
    from python_ref.performer import performer_attention as reference
    q, k, v = packed_qkv("reference", 1, 10, 2, 16, torch.float32, "v")
    projection = random_projection("reference", 16)
    out = armour_kernels.performer_attention(q, k, v, projection=projection, backend="reference")
    expected = reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), projection=projection)
    torch.testing.assert_close(out, expected.transpose(1, 2))


# ----------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("change, error, match", [
    (dict(kernel="gelu"), ValueError, "kernel must be one of"),
    (dict(mode="fast"), ValueError, "mode must be one of"),
    (dict(value="k"), ValueError, "value must be one of"),
    (dict(projection=torch.randn(44, 8)), ValueError, r"projection must be \(m, d\)"),
    (dict(projection=torch.randn(44)), ValueError, r"projection must be \(m, d\)"),
    (dict(projection=torch.randn(0, 16)), ValueError, r"projection must be \(m, d\)"),
    (dict(projection=torch.randn(44, 16, dtype=torch.float64).long()), TypeError, "floating-point"),
    (dict(v=None), ValueError, "needs v"),
    (dict(value="q"), ValueError, "uses the query as the value"),
    (dict(k=torch.randn(1, 10, 2, 8)), ValueError, "must agree in B, H and D"),
    (dict(v=torch.randn(1, 9, 2, 16)), ValueError, "must match k"),
    (dict(k=torch.randn(1, 10, 2, 16, dtype=torch.float64)), TypeError, "but q is"),
    (dict(q=torch.randn(10, 2, 16)), ValueError, r"must be \(B, N, H, D\)"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
])
@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_bad_arguments(backend, change, error, match):
    """The op checks its arguments before it picks a kernel: the same error on every backend."""
    args = dict(q=torch.randn(1, 10, 2, 16), k=torch.randn(1, 10, 2, 16), v=torch.randn(1, 10, 2, 16),
                projection=torch.randn(44, 16), backend=backend)
    assert_bad_argument(armour_kernels.performer_attention, args, change, error, match)


def test_auto_backend_on_cpu_without_the_extension_is_a_clear_error():
    q, k, v = packed_qkv("cpu", 1, 10, 2, 16, torch.float32, "v")
    projection = random_projection("cpu", 16)
    assert_no_cpu_kernel_error(OP, lambda: armour_kernels.performer_attention(q, k, v, projection=projection))


# ----------------------------------------------------------------------------- GPU only

@requires_cuda
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("value", ["v", "q"])
def test_gpu_large(dtype, value):
    q, k, v = packed_qkv("triton", 2, 1025, 4, 32, dtype, value)
    performer_check("triton", q, k, v, random_projection("triton", 32), kernel="softmax", mode="clean", value=value)
