"""Nyström and Performer on CPU: the fused C++ forward kernels (armour_kernels._C) and the
recompute backward, through the public ops, against python_ref in float64; every ISA path;
input errors; backend="auto" on CPU tensors."""
import pytest
import torch

import armour_kernels
from armour_kernels import cpu
from armour_kernels.backend import select
from python_ref.nystrom import nystrom_attention as nystrom_reference
from python_ref.performer import gaussian_orthogonal_random_matrix
from python_ref.performer import performer_attention as performer_reference
from tests.conftest import assert_close

pytestmark = pytest.mark.skipif(not (cpu.has_op("nystrom_attention") and cpu.has_op("performer_attention")),
                                reason="armour_kernels._C not built with the Nyström / Performer kernels")


def _qkv(batch, n, heads, d, value, dtype=torch.float32, nk=None):
    """q, k, v as strided views of packed projections (B, N, 3, H, D), as the layers make them."""
    nk = n if nk is None else nk
    qkv = torch.randn(batch, max(n, nk), 3, heads, d, dtype=torch.float64)
    q, k, v = qkv[:, :n, 0], qkv[:, :nk, 1], qkv[:, :nk, 2]
    return q.to(dtype), k.to(dtype), (v.to(dtype) if value == "v" else None)


def _grad_check(op, reference, tensors, dtype, **options):
    """Forward and gradients of op(*tensors) vs reference on float64 copies (layout (B, H, N, D))."""
    ours = [None if t is None else t.detach().requires_grad_() for t in tensors]
    refs = [None if t is None else t.detach().double().requires_grad_() for t in tensors]
    out = op(*ours, **options)
    expected = reference(*refs)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out, expected, dtype, msg="out")
    dout = torch.randn_like(expected)
    out.backward(dout.to(dtype))
    expected.backward(dout)
    for i, (mine, ref) in enumerate(zip(ours, refs)):
        if mine is not None:
            assert mine.grad.dtype == dtype
            assert_close(mine.grad, ref.grad, dtype, msg=f"grad {i}")


def _t(x):
    return None if x is None else x.transpose(1, 2)


def _performer_pair(proj, kernel, mode, value):
    """(the CPU op, the float64 python_ref definition) of one Performer configuration, both in (B, N, H, D)."""
    def op(q, k, v):
        return armour_kernels.performer_attention(q, k, v, projection=proj, kernel=kernel, mode=mode, value=value,
                                                  backend="cpu")

    def ref(q, k, v):
        return performer_reference(_t(q), _t(k), _t(v), projection=proj.double(), kernel=kernel, mode=mode,
                                   value=value).transpose(1, 2)
    return op, ref


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("mode", ["clean", "seed"])
@pytest.mark.parametrize("value, n, nk, m", [("v", 37, 29, 24), ("q", 50, 50, 20), ("v", 1, 3, 7)])
def test_performer_matches_reference(kernel, mode, value, n, nk, m):
    q, k, v = _qkv(2, n, 3, 16, value, nk=nk)
    proj = gaussian_orthogonal_random_matrix(m, 16)

    op, ref = _performer_pair(proj, kernel, mode, value)
    _grad_check(op, ref, (q, k, v), torch.float32)


@pytest.mark.parametrize("mode", ["clean", "seed"])
@pytest.mark.parametrize("value, n, m, taps", [
    ("v", 77, 8, 33),   # n not divisible by m: 3 zero rows padded in front
    ("q", 64, 8, 33),   # divisible, Armour value
    ("v", 5, 8, 0),     # n < m: most landmarks are padding only; no residual conv
    ("q", 19, 4, 5),
])
def test_nystrom_matches_reference(mode, value, n, m, taps):
    q, k, v = _qkv(2, n, 3, 16, value)
    conv = torch.randn(3, 1, taps, 1, dtype=torch.float64) * 0.2 if taps else None

    def op(q, k, v, conv_weight):
        return armour_kernels.nystrom_attention(q, k, v, num_landmarks=m, mode=mode, value=value,
                                                conv_weight=conv_weight, backend="cpu")

    def ref(q, k, v, conv_weight):
        return nystrom_reference(_t(q), _t(k), _t(v), num_landmarks=m, mode=mode, value=value,
                                 conv_weight=conv_weight).transpose(1, 2)

    _grad_check(op, ref, (q, k, v, None if conv is None else conv.float()), torch.float32)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_every_isa_path(isa):
    if isa not in cpu.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    q, k, v = _qkv(2, 45, 2, 32, "v")
    proj = gaussian_orthogonal_random_matrix(40, 32)
    conv = torch.randn(2, 1, 33, 1) * 0.2
    with cpu.use_isa(isa):
        perf = armour_kernels.performer_attention(q, k, v, projection=proj, mode="seed", backend="cpu")
        nys = armour_kernels.nystrom_attention(q, k, v, num_landmarks=16, mode="seed", conv_weight=conv,
                                               backend="cpu")
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    assert_close(perf, performer_reference(qd, kd, vd, projection=proj.double(), mode="seed").transpose(1, 2),
                 torch.float32)
    assert_close(nys, nystrom_reference(qd, kd, vd, num_landmarks=16, mode="seed",
                                        conv_weight=conv.double()).transpose(1, 2), torch.float32)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("kernel, mode, value", [("softmax", "clean", "q"), ("softmax", "seed", "v"),
                                                 ("relu", "clean", "v")])
def test_performer_fused_backward_every_isa(isa, kernel, mode, value):
    """The fused C++ backward on each ISA path (seed: the attached global stabiliser), vs float64 autograd."""
    if isa not in cpu.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    q, k, v = _qkv(2, 41, 2, 32, value)
    proj = gaussian_orthogonal_random_matrix(40, 32)

    op, ref = _performer_pair(proj, kernel, mode, value)
    with cpu.use_isa(isa):
        _grad_check(op, ref, (q, k, v), torch.float32)


def test_bfloat16_input_computes_in_float32():
    q, k, v = _qkv(1, 33, 2, 16, "v", dtype=torch.bfloat16)
    proj = gaussian_orthogonal_random_matrix(20, 16)
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    out = armour_kernels.performer_attention(q, k, v, projection=proj, backend="cpu")
    assert out.dtype == torch.bfloat16
    assert_close(out, performer_reference(qd, kd, vd, projection=proj.double()).transpose(1, 2), torch.bfloat16)
    out = armour_kernels.nystrom_attention(q, k, v, num_landmarks=8, backend="cpu")
    assert out.dtype == torch.bfloat16
    assert_close(out, nystrom_reference(qd, kd, vd, num_landmarks=8).transpose(1, 2), torch.bfloat16)


def test_auto_backend_picks_the_cpu_kernels():
    for op in ("nystrom_attention", "performer_attention"):
        assert select(op, torch.device("cpu"), "auto") == "cpu"
    q, k, v = _qkv(1, 20, 2, 16, "v")
    out = armour_kernels.nystrom_attention(q, k, v, num_landmarks=4)
    expected = armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, backend="reference")
    assert_close(out, expected, torch.float32)


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(1, 20, 2, 16, "v")
    proj = gaussian_orthogonal_random_matrix(20, 16)
    with pytest.raises(ValueError, match="projection"):
        armour_kernels.performer_attention(q, k, v, projection=proj[:, :8], backend="cpu")
    with pytest.raises(ValueError, match="kernel"):
        armour_kernels.performer_attention(q, k, v, projection=proj, kernel="gelu", backend="cpu")
    with pytest.raises(ValueError, match="num_landmarks"):
        armour_kernels.nystrom_attention(q, k, v, num_landmarks=0, backend="cpu")
    with pytest.raises(ValueError, match="conv_weight"):
        armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, conv_weight=torch.randn(2, 1, 4, 1),
                                         backend="cpu")
    # the extension's own checks (reached by direct callers)
    with pytest.raises(RuntimeError, match="float32"):
        cpu._C.performer_attention(q.double(), k.double(), v.double(), proj, "softmax", "clean")
    with pytest.raises(RuntimeError, match="must agree"):
        cpu._C.nystrom_attention(q, k[..., :8], v, None, 4, 6, "clean")
    with pytest.raises(RuntimeError, match="mode"):
        cpu._C.nystrom_attention(q, k, v, None, 4, 6, "dirty")


def test_any_strides_give_the_contiguous_result():
    """Feature stride ≠ 1 (a (B, N, D, H) buffer seen as (B, N, H, D)) reads the same numbers."""
    q, k, v = (torch.randn(2, 23, 16, 3).transpose(2, 3) for _ in range(3))
    assert q.stride(3) != 1
    proj = gaussian_orthogonal_random_matrix(20, 16)
    conv = torch.randn(3, 1, 9, 1)
    for value in ("v", "q"):
        vv = v if value == "v" else None
        strided = armour_kernels.performer_attention(q, k, vv, projection=proj, value=value, backend="cpu")
        dense = armour_kernels.performer_attention(q.contiguous(), k.contiguous(), None if vv is None else v.contiguous(),
                                                   projection=proj, value=value, backend="cpu")
        torch.testing.assert_close(strided, dense)
        strided = armour_kernels.nystrom_attention(q, k, vv, num_landmarks=5, value=value, conv_weight=conv,
                                                   backend="cpu")
        dense = armour_kernels.nystrom_attention(q.contiguous(), k.contiguous(), None if vv is None else v.contiguous(),
                                                 num_landmarks=5, value=value, conv_weight=conv, backend="cpu")
        torch.testing.assert_close(strided, dense)


def test_torch_compile_forward_and_backward():
    """The CPU launchers honour the ops' fake kernels (shapes, contiguous gradients) under torch.compile."""
    q, k, v = (torch.randn(2, 20, 2, 16, requires_grad=True) for _ in range(3))
    proj = gaussian_orthogonal_random_matrix(20, 16)

    def loss(q, k, v):
        return (armour_kernels.performer_attention(q, k, v, projection=proj, backend="cpu").sum()
                + armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, mode="seed", backend="cpu").sum())

    torch.compile(loss, fullgraph=True)(q, k, v).backward()
    compiled = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    loss(q, k, v).backward()
    for mine, eager in zip(compiled, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(mine, eager)
