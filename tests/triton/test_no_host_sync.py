"""The Triton launchers never read a device value on the host in a forward or backward call.

A read (.item(), .tolist(), int() / float() / bool() of a tensor) waits for the GPU to finish
everything queued before it: the launch pipeline drains once per call. Here, in the interpreter,
those reads raise while the launchers run (forward and backward of every family, the seed modes,
the deterministic table gradient); on a GPU, bench/gpu_sweep.py runs them under
torch.cuda.set_sync_debug_mode("error"), which also sees the reads PyTorch makes in C++ (e.g. a
0-d tensor used as an index), invisible here.
"""
import contextlib

import pytest
import torch

import python_ref
from armour_kernels.triton import attention as ta
from armour_kernels.triton import linear_act as tla
from armour_kernels.triton import nystrom as tn
from armour_kernels.triton import performer as tp
from helpers import HAS_CUDA

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="interpreter check (bench/gpu_sweep.py checks CUDA)")
READS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")


@contextlib.contextmanager
def no_host_reads():
    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"host read of a tensor: Tensor.{name}")
        return read

    saved = {name: getattr(torch.Tensor, name) for name in READS}
    try:
        for name in READS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


@pytest.mark.parametrize("bias, deterministic", [(None, False), ("table", False), ("table", True),
                                                 ("broadcast", True), ("broadcast", False)])
def test_attention_launchers(bias, deterministic):
    q, k, v = (torch.randn(2, 21, 2, 16) for _ in range(3))
    table = index = None
    if bias == "table":
        table, index = torch.randn(2, 9), torch.randint(0, 9, (21, 21))
    elif bias == "broadcast":
        table = torch.randn(2, 1, 21)
    kw = dict(value="q+v", scale=None, mask_diagonal=bias == "broadcast")
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        with no_host_reads():
            out, lse = ta.attention_forward(q, k, v, table, index, **kw)
            ta.attention_backward(torch.randn_like(out), q, k, v, table, index, out, lse, need_dbias=bias is not None,
                                  **kw)
    finally:
        torch.use_deterministic_algorithms(saved)


@pytest.mark.parametrize("mode", ["clean", "seed"])
def test_nystrom_launchers(mode):
    q, k, v = (torch.randn(2, 30, 2, 16) for _ in range(3))
    conv = torch.randn(2, 1, 33, 1)
    with no_host_reads():
        out, saved = tn.nystrom_forward(q, k, v, conv, num_landmarks=8, mode=mode)
        tn.nystrom_backward(torch.randn_like(out), q, k, v, conv, saved, num_landmarks=8, mode=mode)


@pytest.mark.parametrize("kernel, mode", [("softmax", "clean"), ("softmax", "seed"), ("relu", "clean")])
def test_performer_launchers(kernel, mode):
    q, k, v = (torch.randn(2, 30, 2, 16) for _ in range(3))
    projection = python_ref.gaussian_orthogonal_random_matrix(24, 16)
    with no_host_reads():
        out, ctx, ksum, stab = tp.performer_forward(q, k, v, projection, kernel=kernel, mode=mode, value="v")
        tp.performer_backward(torch.randn_like(out), q, k, v, projection, ctx, ksum, stab, kernel=kernel, mode=mode,
                              value="v")


def test_linear_act_launcher():
    with no_host_reads():
        tla.linear_act_forward(torch.randn(30, 24), torch.randn(40, 24), torch.randn(40), act_out=True,
                               residual=torch.randn(30, 40))


def test_the_check_catches_a_read():
    with pytest.raises(AssertionError, match="host read"):
        with no_host_reads():
            int(torch.ones(()).argmax())
