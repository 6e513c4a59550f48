"""The Linear + activation op (armour_kernels.linear_act) on every backend against PyTorch's layers."""
import pytest
import torch
import torch.nn.functional as F

import armour_kernels
from helpers import assert_close, backend_params


@pytest.mark.parametrize("backend", backend_params(op="linear_act"))
def test_linear_act_op_on_every_backend(backend):
    """The public op: the activation on the input or the output, and with a gradient wanted (then
    PyTorch's GEMM under autograd)."""
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(3, 7, 40, generator=g), torch.randn(24, 40, generator=g), torch.randn(24, generator=g)
    assert_close(armour_kernels.linear_act(x, w, b, act_in=True, backend=backend), F.linear(F.hardswish(x), w, b),
                 torch.float32)
    x.requires_grad_(True)
    y = armour_kernels.linear_act(x, w, b, act="hardswish", backend=backend)
    y.sum().backward()
    assert_close(y, F.hardswish(F.linear(x, w, b)), torch.float32)
    assert x.grad is not None and y.grad_fn is not None
