"""The Linear + activation family as ops: act(act_in(x)·Wᵀ + b) [+ residual], the MLP, the conv chain.

The dense layers around attention — LeViT's BN-folded Linear_BN + Hardswish, its Hardswish →
proj, DeiT's qkv / proj / MLP, LeViT's convolution stem — call these, never a backend; the op
picks the path (docs/linear_act.md):

    path                      when                                            kernel
    CPU inference             backend "cpu", no gradient wanted, float32 /    cpu/linear_act.py: oneDNN GEMMs and
                              bfloat16 compute, not being compiled            convs with fused post-ops and weights
                                                                              prepared once (ATen for small fp32
                                                                              GEMMs), chunked MLP
    Triton inference          backend "triton", no gradient wanted,           armour_kernels::linear_act_infer
                              Hardswish and/or a residual to fuse             → triton/linear_act.py
    Linear + Hardswish with   a gradient wanted, Hardswish after the GEMM     armour_kernels::linear_hardswish
    autograd                  only, backend "cpu" or "triton"                 (dispatcher op: C++ kernel and
                                                                              autograd, Triton on CUDA)
    PyTorch                   everything else: "reference", other             F.linear + the activation
                              activations with a gradient, and CPU under
                              torch.compile (inductor then fuses and
                              prepacks the GEMMs itself)

Under CPU autocast the compute dtype is autocast's, as for F.linear.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import cpu
from ..backend import select, wants_grad
from ..constants import ACTIVATIONS

OP = "linear_act"

# The PyTorch form of each activation (the definition every kernel path is tested against).
TORCH_ACTIVATIONS = {"none": lambda t: t, "hardswish": F.hardswish, "relu": F.relu, "gelu": F.gelu,
                     "gelu_tanh": functools.partial(F.gelu, approximate="tanh"), "silu": F.silu}
_TRITON_ACTIVATIONS = ("none", "hardswish")  # what the Triton GEMM epilogue applies
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def activation_of(module: Optional[nn.Module]) -> Optional[str]:
    """The activation name of an nn activation module ("none" for Identity / None), or None when the
    fused layers have no such activation."""
    if module is None or isinstance(module, nn.Identity):
        return "none"
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    for cls, name in ((nn.Hardswish, "hardswish"), (nn.ReLU, "relu"), (nn.SiLU, "silu")):
        if isinstance(module, cls):
            return name
    return None


def compute_dtype(x: Tensor, device: Optional[torch.device] = None) -> torch.dtype:
    """The dtype F.linear computes in here: autocast's when autocast is on for x's device, else x's."""
    kind = (device or x.device).type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


_CPU_MODULE = []  # armour_kernels.cpu.linear_act, imported on first use (a cpu-only import; keeps this file light)


def _cpu():
    if not _CPU_MODULE:
        from ..cpu import linear_act as cpu_linear_act
        _CPU_MODULE.append(cpu_linear_act)
    return _CPU_MODULE[0]


def _cpu_inference(kernel: str, dtype: torch.dtype, x: Tensor, *tensors, grad: Optional[bool] = None) -> bool:
    """Whether the CPU inference path runs this call (see the table in the module docstring)."""
    if kernel != "cpu" or (grad if grad is not None else wants_grad(x, *tensors)) or not x.numel():
        return False
    return not torch.compiler.is_compiling() and (_CPU_MODULE or _cpu()) and _CPU_MODULE[0].available(dtype)


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


# ----------------------------------------------------------------------------- ops

def _triton_linear_hardswish(x, weight, bias):
    from ..triton.linear_act import linear_act_forward
    return linear_act_forward(x, weight, bias, act_out=True)


def _linear_hardswish_fake(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


# armour_kernels::linear_hardswish is a dispatcher op (schema in csrc/torch_ops/schemas.cpp): its
# CPU kernel and its autograd are C++ (csrc/torch_ops/linear_hardswish.cpp), its CUDA kernel the
# Triton launcher (triton imported on the first call), its fake implementation here.
_LINEAR_HARDSWISH = None
if cpu.built():
    torch.library.register_fake("armour_kernels::linear_hardswish", _linear_hardswish_fake)
    torch.library.register_kernel("armour_kernels::linear_hardswish", "cuda", _triton_linear_hardswish)
    _LINEAR_HARDSWISH = torch.ops.armour_kernels.linear_hardswish.default


@torch.library.custom_op("armour_kernels::triton_linear_hardswish", mutates_args=())
def _triton_linear_hardswish_op(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The Triton launcher on CPU tensors (the interpreter; the dispatcher would send CPU tensors to
    the C++ kernel), or on CUDA without the built extension."""
    return _triton_linear_hardswish(x, weight, bias)


_triton_linear_hardswish_op.register_fake(_linear_hardswish_fake)


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)


def _backward(ctx, grad):
    """What csrc/torch_ops/linear_hardswish.cpp does for the dispatcher op."""
    x, weight, bias = ctx.saved_tensors
    z = F.linear(x, weight, bias)  # the pre-activation, recomputed: the fused forward never stores it
    dz = torch.ops.aten.hardswish_backward(grad, z)
    dx = dz @ weight if ctx.needs_input_grad[0] else None
    dz2 = dz.reshape(-1, dz.shape[-1])
    dw = dz2.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
    db = dz2.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
    return dx, dw, db


_triton_linear_hardswish_op.register_autograd(_backward, setup_context=_setup_context)


def _linear_hardswish(x, weight, bias, kernel):
    """hardswish(x·Wᵀ + b) with autograd on backend `kernel`: the dispatcher op wherever it has the
    kernel (CPU, CUDA), the interpreter's op for Triton on CPU tensors, PyTorch for "reference"."""
    if kernel == "reference":
        return F.hardswish(F.linear(x, weight, bias))
    if _LINEAR_HARDSWISH is not None and (kernel == "cpu" or x.is_cuda):
        return _LINEAR_HARDSWISH(x, weight, bias)
    return _triton_linear_hardswish_op(x, weight, bias)


@torch.library.custom_op("armour_kernels::linear_act_infer", mutates_args=())
def _linear_act_infer(x: Tensor, weight: Tensor, bias: Optional[Tensor], act_in: bool, act_out: bool,
                      residual: Optional[Tensor] = None) -> Tensor:
    """The Triton inference GEMM as an op, so a patched model traces under torch.compile. No autograd:
    `linear_act` calls it only when no gradient is wanted."""
    from ..triton.linear_act import linear_act_forward
    return linear_act_forward(x, weight, bias, act_in=act_in, act_out=act_out, residual=residual)


@_linear_act_infer.register_fake
def _(x, weight, bias, act_in, act_out, residual=None):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


# ----------------------------------------------------------------------------- checks

def _check(x, weight, bias, act, residual=None):
    """TypeError / ValueError for bad arguments. Ordered so that a good call costs few Python steps:
    it runs on every call, and a tiny layer's whole kernel takes a few µs."""
    if not (isinstance(x, Tensor) and isinstance(weight, Tensor) and (bias is None or isinstance(bias, Tensor))
            and (residual is None or isinstance(residual, Tensor))):
        for name, t in (("x", x), ("weight", weight), ("bias", bias), ("residual", residual)):
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"{OP}: {name} must be a tensor, got {type(t).__name__}")
    if act not in ACTIVATIONS:
        raise ValueError(f"{OP}: act must be one of {ACTIVATIONS}, got {act!r}")
    if not x.is_floating_point():
        raise TypeError(f"{OP}: floating-point inputs only, got {x.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"{OP}: weight must be (out_features, in_features), got {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{OP}: x's last dim must be in_features={weight.shape[1]}, got x {tuple(x.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"{OP}: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    device = x.device
    if weight.device != device or (bias is not None and bias.device != device) or (
            residual is not None and residual.device != device):
        for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
            if t is not None and t.device != device:
                raise TypeError(f"{OP}: {name} is on {t.device}, x is on {device}")
    if residual is not None and residual.shape != (*x.shape[:-1], weight.shape[0]):
        raise ValueError(f"{OP}: residual must have the output's shape {(*x.shape[:-1], weight.shape[0])}, "
                         f"got {tuple(residual.shape)}")
    return device


# ----------------------------------------------------------------------------- public functions

def _torch_linear_act(x, weight, bias, act, act_in, residual, inplace_input=False):
    """The PyTorch computation every path reproduces: residual + act(F.linear(act_in(x), W, b))."""
    if act_in:
        x = F.hardswish(x, inplace=inplace_input)
    y = TORCH_ACTIVATIONS[act](F.linear(x, weight, bias))
    return y if residual is None else residual + y  # promotes as `x + block(x)` would


def _add(y, residual):
    return y if residual is None else residual + y


def linear_act(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, act: str = "none",
               act_in: bool = False, residual: Optional[Tensor] = None, backend: str = "auto",
               inplace_input: bool = False) -> Tensor:
    """act(act_in(x) @ weightᵀ + bias) [+ residual]; act_in (bool) applies Hardswish to x first.

    x (..., in), weight (out, in), bias (out,) or None, residual (..., out) or None (added after
    the activation). `inplace_input`: the caller owns x and lets the input Hardswish overwrite it
    (only honoured when no gradient is wanted).
    """
    device = _check(x, weight, bias, act, residual)
    kernel = select(OP, device, backend)
    dtype = compute_dtype(x, device)
    grad = wants_grad(x, weight, bias, residual)
    if _cpu_inference(kernel, dtype, x, grad=grad):
        x = F.hardswish(x, inplace=inplace_input) if act_in else x
        return _cpu().linear(x, weight, bias, act, dtype, residual=residual)
    fuses = act_in or act != "none" or residual is not None  # a plain GEMM is cuBLAS's job
    if kernel == "triton" and fuses and act in _TRITON_ACTIVATIONS and dtype in _TRITON_DTYPES:
        cast = (x.to(dtype), weight.to(dtype), _cast(bias, dtype))
        if not grad:
            if residual is None or residual.dtype == dtype:
                return _linear_act_infer(*cast, act_in, act == "hardswish", residual)
            return _add(_linear_act_infer(*cast, act_in, act == "hardswish"), residual)
        if act == "hardswish" and not act_in:
            return _add(_linear_hardswish(*cast, "triton"), residual)
    if kernel == "cpu" and grad and act == "hardswish" and not act_in and not torch.compiler.is_compiling():
        cast = (x.to(dtype), weight.to(dtype), _cast(bias, dtype))
        return _add(_linear_hardswish(*cast, "cpu"), residual)
    return _torch_linear_act(x, weight, bias, act, act_in, residual, inplace_input and not grad)


def linear_hardswish(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """hardswish(x @ weight.T + bias) in one fused kernel with autograd: x (..., in), weight (out, in),
    bias (out,) or None, all one dtype."""
    _check(x, weight, bias, "hardswish")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"linear_hardswish: {name} is {t.dtype}, x is {x.dtype}")
    return _linear_hardswish(x, weight, bias, select(OP, x.device, backend))


def mlp(x: Tensor, fc1: tuple, fc2: tuple, *, act: str, residual: Optional[Tensor] = None,
        backend: str = "auto") -> Tensor:
    """fc2(act(fc1(x))) [+ residual]; fc1, fc2 = (weight, bias or None).

    CPU inference: oneDNN in row chunks, so the hidden activation never exists for the whole batch."""
    (w1, b1), (w2, b2) = fc1, fc2
    kernel = select(OP, x.device, backend)
    dtype = compute_dtype(x)
    if act in TORCH_ACTIVATIONS and _cpu_inference(kernel, dtype, x, w1, b1, w2, b2, residual):
        _check(x, w1, b1, act)
        return _cpu().mlp(x, (w1, b1), act, (w2, b2), dtype, residual=residual)
    hidden = linear_act(x, w1, b1, act=act, backend=backend)
    return linear_act(hidden, w2, b2, residual=residual, backend=backend)


def conv_chain(x: Tensor, layers: list, *, backend: str = "auto") -> Tensor:
    """Convolutions with activations, in order: layers = [(weight, bias, stride, padding, act)], x (B, C, H, W).

    CPU inference: one channels-last oneDNN chain with each activation as a post-op, a few images
    at a time (the result is then channels-last). Elsewhere: F.conv2d and the activation, layer by layer."""
    kernel = select(OP, x.device, backend)
    dtype = compute_dtype(x)
    if _cpu_inference(kernel, dtype, x, *(t for layer in layers for t in layer[:2])):
        return _cpu().conv_chain(x, layers, dtype)
    for weight, bias, stride, padding, act in layers:
        x = TORCH_ACTIVATIONS[act](F.conv2d(x, weight, bias, stride, padding))
    return x


__all__ = ["linear_act", "linear_hardswish", "mlp", "conv_chain", "activation_of", "compute_dtype",
           "TORCH_ACTIVATIONS"]
