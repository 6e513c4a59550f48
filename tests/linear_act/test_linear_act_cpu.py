"""Linear + bias + Hardswish: the C++ kernel (every ISA) and the public op vs PyTorch in float64."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close

cpu = pytest.importorskip("armour_kernels.cpu")
if not cpu.has_op("linear_hardswish"):
    pytest.skip("armour_kernels._C is not built", allow_module_level=True)
from armour_kernels import linear_hardswish  # noqa: E402
from armour_kernels.cpu.linear_act import linear_hardswish_forward  # noqa: E402


def reference(x, weight, bias):
    return F.hardswish(F.linear(x.double(), weight.double(), None if bias is None else bias.double()))


def inputs(shape, out_features, dtype, with_bias=True):
    x = torch.randn(*shape) * 2  # pre-activations spread over both kinks of Hardswish (±3)
    w = torch.randn(out_features, shape[-1]) / shape[-1] ** 0.5 * 2
    b = torch.randn(out_features) if with_bias else None
    return x.to(dtype), w.to(dtype), None if b is None else b.to(dtype)


GEMMS = ["aten"] + (["onednn", "onednn_fused"] if cpu._C.has_onednn_linear() else [])


@pytest.mark.parametrize("isa", cpu.supported_isas())
@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape,out_features,with_bias", [
    ((5, 37), 19, True), ((2, 197, 64), 128, True), ((3, 16), 33, False), ((1, 1), 1, True)])
def test_kernel_matches_reference(isa, gemm, dtype, shape, out_features, with_bias):
    if dtype == torch.float64 and gemm != "aten":
        pytest.skip("oneDNN has no float64 linear")
    if dtype == torch.bfloat16 and gemm != "aten" and not cpu._C.has_onednn_linear_bf16():
        pytest.skip("oneDNN has no bfloat16 kernels on this CPU (test_onednn_bf16_without_its_kernels_is_a_clear_error)")
    if gemm == "onednn_fused" and isa != cpu.supported_isas()[-1]:
        pytest.skip("no kernel of ours runs: one ISA is enough")
    x, w, b = inputs(shape, out_features, dtype, with_bias)
    with cpu.use_isa(isa):
        y = linear_hardswish_forward(x, w, b, gemm=gemm)
    assert y.shape == (*shape[:-1], out_features) and y.dtype == dtype
    assert_close(y, reference(x, w, b), dtype)


@pytest.mark.skipif(not cpu._C.has_onednn_linear() or cpu._C.has_onednn_linear_bf16(),
                    reason="for CPUs where torch has oneDNN but oneDNN has no bfloat16 kernels (AVX2)")
@pytest.mark.parametrize("gemm", ["onednn", "onednn_fused"])
def test_onednn_bf16_without_its_kernels_is_a_clear_error(gemm):
    x, w, b = inputs((4, 8), 12, torch.bfloat16)
    with pytest.raises(RuntimeError, match="bfloat16 on a CPU where oneDNN has bfloat16 kernels"):
        linear_hardswish_forward(x, w, b, gemm=gemm)
    assert_close(linear_hardswish_forward(x, w, b), reference(x, w, b), torch.bfloat16)  # auto: ATen's GEMM


@pytest.mark.parametrize("gemm", GEMMS)
def test_non_contiguous_inputs(gemm):
    x, w, b = inputs((4, 10, 24), 40, torch.float32)
    x = x.transpose(0, 1)
    w = w.t().contiguous().t()
    assert not x.is_contiguous() and not w.is_contiguous()
    assert_close(linear_hardswish_forward(x, w, b, gemm=gemm), reference(x, w, b), torch.float32)


@pytest.mark.parametrize("backend", ["cpu", "reference", "auto"])
def test_op_forward_and_backward(backend):
    x, w, b = inputs((3, 9, 24), 40, torch.float32)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    y = linear_hardswish(x, w, b, backend=backend)
    g = torch.randn_like(y)
    y.backward(g)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = reference(x64, w64, b64)
    y64.backward(g.double())
    assert_close(y, y64, torch.float32)
    for got, want in ((x.grad, x64.grad), (w.grad, w64.grad), (b.grad, b64.grad)):
        assert_close(got, want, torch.float32)


def test_op_gradcheck_float64():
    x, w, b = inputs((2, 3, 6), 5, torch.float64)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: linear_hardswish(x, w, b, backend="cpu"), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: linear_hardswish(x, w, backend="cpu"), (x, w))


def test_opcheck_custom_op():
    x, w, b = inputs((4, 8), 12, torch.float32)
    torch.library.opcheck(torch.ops.armour_kernels.linear_hardswish.default, (x, w, b))


def test_bf16_op_under_autocast_style_inputs():
    x, w, b = inputs((8, 32), 16, torch.bfloat16)
    assert_close(linear_hardswish(x, w, b, backend="cpu"), reference(x, w, b), torch.bfloat16)


@pytest.mark.parametrize("case,exc,match", [
    ("in_features", ValueError, "in_features"),
    ("weight_1d", ValueError, "out_features, in_features"),
    ("bias_shape", ValueError, "bias must be"),
    ("dtype", TypeError, "weight is"),
    ("int", TypeError, "floating-point"),
    ("backend", ValueError, "backend must be one of"),
])
def test_bad_input_errors(case, exc, match):
    x, w, b = inputs((4, 8), 12, torch.float32)
    backend = "auto"
    if case == "in_features":
        x = x[:, :5]
    elif case == "weight_1d":
        w = w[0]
    elif case == "bias_shape":
        b = b[:3]
    elif case == "dtype":
        w = w.double()
    elif case == "int":
        x, w, b = x.int(), w.int(), b.int()
    elif case == "backend":
        backend = "gpu"
    with pytest.raises(exc, match=match):
        linear_hardswish(x, w, b, backend=backend)


def test_kernel_rejects_bad_input_clearly():
    x, w, b = inputs((4, 8), 12, torch.float32)
    with pytest.raises(TypeError, match="float32, bfloat16 or float64"):  # a dtype error is a TypeError
        linear_hardswish_forward(x.int(), w.int(), b.int())
    with pytest.raises(RuntimeError, match="gemm must be"):
        linear_hardswish_forward(x, w, b, gemm="blas")
