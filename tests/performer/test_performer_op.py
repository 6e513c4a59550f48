"""Performer (FAVOR+) attention: the fused Triton kernels (interpreter on CPU) against python_ref
in float64, the op's checks and torch.compile, and the module against performer_pytorch."""
import pytest
import torch

import armour_kernels
from armour_kernels.nn.performer import PerformerAttention
from python_ref.performer import default_num_features, gaussian_orthogonal_random_matrix
from python_ref.performer import performer_attention as reference
from tests.conftest import (HAS_CUDA, TRITON_DTYPES, assert_bad_argument, assert_close, assert_no_cpu_kernel_error,
                            requires_cuda)

DEVICE = "cuda" if HAS_CUDA else "cpu"


def _inputs(batch, n, heads, d, dtype, value, scale=1.0, nk=None):
    """q, k, v as strided views of packed projections (B, N, 3, H, D), like a real layer's."""
    nk = n if nk is None else nk
    q = (torch.randn(batch, n, 3, heads, d, device=DEVICE) * scale)[:, :, 0].to(dtype)
    kv = torch.randn(batch, nk, 2, heads, d, device=DEVICE) * scale
    k, v = kv[:, :, 0].to(dtype), kv[:, :, 1].to(dtype)
    return q, k, (v if value == "v" else None)


def _projection(d, m=None):
    return gaussian_orthogonal_random_matrix(m or default_num_features(d), d).to(DEVICE)


def _check_against_reference(q, k, v, projection, *, grads=True, **options):
    """Forward and (q, k, v) gradients of the fused op vs python_ref in float64 on the same inputs."""
    dtype = q.dtype
    ours = [t.detach().requires_grad_() if t is not None else None for t in (q, k, v)]
    refs = [t.detach().double().transpose(1, 2).requires_grad_() if t is not None else None for t in (q, k, v)]
    out = armour_kernels.performer_attention(*ours, projection=projection, backend="triton", **options)
    expected = reference(*refs, projection=projection.double(), **options)
    assert out.dtype == dtype and out.shape == expected.transpose(1, 2).shape
    assert_close(out, expected.transpose(1, 2), dtype, msg="out")
    if not grads:
        return
    dout = torch.randn_like(expected)
    out.backward(dout.transpose(1, 2).to(dtype))
    expected.backward(dout)
    for name, mine, ref in zip("qkv", ours, refs):
        if mine is not None:
            assert mine.grad.dtype == dtype
            assert_close(mine.grad, ref.grad.transpose(1, 2), dtype, msg=f"d{name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("value", ["v", "q"])
@pytest.mark.parametrize("mode", ["clean", "seed"])
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_matches_reference(kernel, mode, value, dtype):
    q, k, v = _inputs(2, 77, 2, 16, dtype, value)
    _check_against_reference(q, k, v, _projection(16), kernel=kernel, mode=mode, value=value)


@pytest.mark.parametrize("n, d, m", [(1, 16, 44), (197, 32, 110), (33, 16, 7)])
def test_odd_shapes(n, d, m):
    q, k, v = _inputs(1, n, 2, d, torch.float32, "v")
    _check_against_reference(q, k, v, _projection(d, m), kernel="softmax", mode="clean", value="v")



@pytest.mark.parametrize("d, m, value", [(64, 266, "v"), (16, 300, "q")])
def test_many_features_run_in_chunks(d, m, value):
    """performer-pytorch's default for dim_head 64 is m = 266: more features than one on-chip chunk."""
    q, k, v = _inputs(1, 20, 2, d, torch.float32, value, scale=0.5)
    _check_against_reference(q, k, v, _projection(d, m), kernel="softmax", mode="seed", value=value)

def test_query_and_key_lengths_differ():
    q, k, v = _inputs(1, 19, 2, 16, torch.float32, "v", nk=50)
    _check_against_reference(q, k, v, _projection(16), kernel="softmax", mode="seed", value="v")


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_fp16_inputs_that_overflow_a_naive_exp(kernel):
    """|u| ≈ 100: exp(u) is inf in fp16 (and fp32); the stabilisers and fp32 math keep it finite."""
    q, k, v = _inputs(1, 40, 2, 16, torch.float16, "v", scale=30.0)
    assert torch.isinf(torch.exp((q.float() * 16 ** -0.25) @ _projection(16).T).half()).any()
    _check_against_reference(q, k, v, _projection(16), kernel=kernel, mode="clean", value="v")



def test_every_buffer_is_written(monkeypatch):
    """The launchers' torch.empty buffers (outputs, gradients, partial sums) start as NaN."""
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: empty(*a, **kw).fill_(float("nan")))
    q, k, v = _inputs(2, 45, 2, 16, torch.float32, "v")
    _check_against_reference(q, k, v, _projection(16), kernel="softmax", mode="seed", value="v")

def test_torch_compile_fullgraph():
    q, k, v = _inputs(1, 30, 2, 16, torch.float32, "v")
    projection = _projection(16)
    fn = torch.compile(lambda q, k, v: armour_kernels.performer_attention(q, k, v, projection=projection,
                                                                           backend="triton"), fullgraph=True)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.sum().backward()
    eager = [t.detach().requires_grad_() for t in (q, k, v)]
    expected = armour_kernels.performer_attention(*eager, projection=projection, backend="triton")
    expected.sum().backward()
    torch.testing.assert_close(out, expected)
    for mine, ref in zip(leaves, eager):
        torch.testing.assert_close(mine.grad, ref.grad)


def test_reference_backend_is_python_ref():
    q, k, v = _inputs(1, 10, 2, 16, torch.float32, "v")
    projection = _projection(16)
    out = armour_kernels.performer_attention(q, k, v, projection=projection, backend="reference")
    expected = reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), projection=projection)
    torch.testing.assert_close(out, expected.transpose(1, 2))


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
def test_bad_arguments(change, error, match):
    args = dict(q=torch.randn(1, 10, 2, 16), k=torch.randn(1, 10, 2, 16), v=torch.randn(1, 10, 2, 16),
                projection=torch.randn(44, 16), backend="reference")
    assert_bad_argument(armour_kernels.performer_attention, args, change, error, match)


def test_auto_backend_on_cpu_without_the_extension_is_a_clear_error():
    q, k, v = _inputs(1, 10, 2, 16, torch.float32, "v")
    assert_no_cpu_kernel_error("performer_attention", lambda: armour_kernels.performer_attention(q.cpu(), k.cpu(), v.cpu(), projection=_projection(16).cpu()))


@pytest.mark.parametrize("generalized", [False, True])
def test_module_matches_performer_pytorch(generalized):
    from performer_pytorch import SelfAttention
    torch.manual_seed(0)
    original = SelfAttention(dim=32, heads=2, dim_head=16, qkv_bias=True, generalized_attention=generalized)
    ours = PerformerAttention(dim=32, heads=2, dim_head=16, qkv_bias=True, generalized_attention=generalized,
                              backend="triton")
    ours.load_state_dict(original.state_dict())
    x = torch.randn(2, 37, 32)
    assert_close(ours(x), original(x), torch.float32)


def test_armour_module_has_no_value_projection():
    module = PerformerAttention(dim=32, heads=2, dim_head=16, value="q", backend="triton")
    assert not hasattr(module, "to_v")
    x = torch.randn(1, 20, 32, requires_grad=True)
    module(x).sum().backward()
    assert module.to_q.weight.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("option", [dict(causal=True), dict(local_heads=1), dict(no_projection=True),
                                    dict(generalized_attention=True, kernel_fn=torch.nn.GELU())])
def test_module_unsupported_options(option):
    with pytest.raises(NotImplementedError):
        PerformerAttention(dim=32, heads=2, dim_head=16, **option)


@requires_cuda
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("value", ["v", "q"])
def test_gpu_large(dtype, value):
    q, k, v = _inputs(2, 1025, 4, 32, dtype, value)
    _check_against_reference(q, k, v, _projection(32), kernel="softmax", mode="clean", value=value)
