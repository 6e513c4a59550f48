"""The Triton Linear + activation kernels (interpreter on CPU): Linear + Hardswish with the activation
on the output or the input, with and without bias, the residual epilogue read through its own
strides, the launchers' argument checks. The public op on every backend is test_linear_act_op.py;
the C++ kernel, test_linear_act_cpu.py; the oneDNN inference layers, test_linear_act_onednn.py."""
import pytest
import torch
import torch.nn.functional as F

from helpers import TRITON_DTYPES, assert_close

pytest.importorskip("triton")
from armour_kernels.triton.linear_act import (hardswish_linear_forward, linear_act_forward,  # noqa: E402
                                              linear_hardswish_forward)


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("shape", [(1, 16, 16), (2, 49, 67, 45), (197, 128, 256)], ids=str)
@pytest.mark.parametrize("act", ["out", "in"])
def test_linear_hardswish_kernel(dtype, shape, act):
    *lead, K, N = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, K + 3, generator=g)[..., 3:].to(dtype)  # non-contiguous rows
    w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dtype)
    b = torch.randn(N, generator=g).to(dtype)
    if act == "out":
        y = linear_hardswish_forward(x, w, b)
        ref = F.hardswish(F.linear(x.double(), w.double(), b.double()))
    else:
        y = hardswish_linear_forward(x, w, b)
        ref = F.linear(F.hardswish(x.double()), w.double(), b.double())
    assert y.shape == (*lead, N) and y.dtype == dtype
    assert_close(y, ref, dtype)
    no_bias = linear_act_forward(x, w, None, act_in=act == "in", act_out=act == "out")
    xin = F.hardswish(x.double()) if act == "in" else x.double()
    ref_no_bias = F.linear(xin, w.double())
    assert_close(no_bias, F.hardswish(ref_no_bias) if act == "out" else ref_no_bias, dtype)


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("act", ["none", "in", "out"])
def test_linear_act_residual_epilogue(dtype, act):
    """y = act(x·Wᵀ + b) + r with r read through its own strides (a transposed view here)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 37, 24, generator=g).to(dtype)
    w = (torch.randn(40, 24, generator=g) * 24 ** -0.5).to(dtype)
    b = torch.randn(40, generator=g).to(dtype)
    r = torch.randn(2, 40, 37, generator=g).to(dtype).transpose(1, 2)
    y = linear_act_forward(x, w, b, act_in=act == "in", act_out=act == "out", residual=r)
    xin = F.hardswish(x.double()) if act == "in" else x.double()
    z = F.linear(xin, w.double(), b.double())
    assert_close(y, (F.hardswish(z) if act == "out" else z) + r.double(), dtype)


def test_linear_hardswish_errors():
    x, w = torch.randn(4, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match="does not match"):
        linear_hardswish_forward(x, torch.randn(5, 7), None)
    with pytest.raises(TypeError, match="share a dtype"):
        linear_hardswish_forward(x, w.half(), None)
    with pytest.raises(TypeError, match="float32/float16/bfloat16"):
        linear_hardswish_forward(x.double(), w.double(), None)
    with pytest.raises(ValueError, match="bias must have shape"):
        linear_hardswish_forward(x, w, torch.randn(4))
    with pytest.raises(ValueError, match="residual must be"):
        linear_act_forward(x, w, None, residual=torch.randn(4, 4))
    with pytest.raises(ValueError, match="residual must be"):
        linear_act_forward(x, w, None, residual=torch.randn(4, 5).half())
