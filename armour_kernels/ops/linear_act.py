"""The Linear + activation family as ops: act(act_in(x)·Wᵀ + b) [+ residual], the MLP, the conv chain.

The dense layers around attention — LeViT's BN-folded Linear_BN + Hardswish, its Hardswish →
proj, DeiT's qkv / proj / MLP, LeViT's convolution stem — call these, never a backend; the op
picks the path by asking armour_kernels.plan.linear_act_plan, where the rules live (which of the
CPU inference engines, the Triton inference GEMM, the Linear + Hardswish op with autograd or plain
PyTorch runs, and the compute dtype: autocast's under CPU autocast, as for F.linear).
docs/linear_act.md has the table.
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
from ..constants import ACTIVATIONS, Activation
from ..plan import compute_dtype, conv_widened, cpu_inference, image_conv_first, linear_act_path

OP = "linear_act"

# The PyTorch form of each activation (the definition every kernel path is tested against).
TORCH_ACTIVATIONS = {"none": lambda t: t, "hardswish": F.hardswish, "relu": F.relu, "gelu": F.gelu,
                     "gelu_tanh": functools.partial(F.gelu, approximate="tanh"), "silu": F.silu}


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


_CPU_MODULE = []  # armour_kernels.cpu.linear_act, imported on first use (a cpu-only import; keeps this file light)


def _cpu():
    if not _CPU_MODULE:
        from ..cpu import linear_act as cpu_linear_act
        _CPU_MODULE.append(cpu_linear_act)
    return _CPU_MODULE[0]


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


# armour_kernels::dense / ::dense_pack (csrc/torch_ops/dense.cpp): the serving dense layer on the CPU,
# inference only (docs/dense.md). Its fakes here, so inductor calls it from its generated code.
_DENSE = _DENSE_MLP = _DENSE_PACK = _IMAGE_CONV = _PATCH_ROWS = None
if cpu.built():
    _DENSE = torch.ops.armour_kernels.dense.default
    _DENSE_MLP = torch.ops.armour_kernels.dense_mlp.default
    _PATCH_ROWS = torch.ops.armour_kernels.patch_rows.default
    _IMAGE_CONV = torch.ops.armour_kernels.image_conv.default
    _DENSE_PACK = torch.ops.armour_kernels.dense_pack.default

    @torch.library.register_fake("armour_kernels::dense")
    def _dense_fake(x, weight, bias, residual, act, act_in, out_features, norm_weight=None, norm_bias=None,
                    norm_eps=None):
        return x.new_empty((*x.shape[:-1], weight.shape[0] if weight.dim() == 2 else out_features))

    @torch.library.register_fake("armour_kernels::image_conv")
    def _image_conv_fake(x, weight, bias, stride, padding, act):
        ho = (x.shape[2] + 2 * padding - weight.shape[2]) // stride + 1
        wo = (x.shape[3] + 2 * padding - weight.shape[3]) // stride + 1
        return torch.empty((x.shape[0], weight.shape[0], ho, wo), dtype=weight.dtype, device=x.device,
                           memory_format=torch.channels_last)

    @torch.library.register_fake("armour_kernels::dense_mlp")
    def _dense_mlp_fake(x, weight1, bias1, act, hidden_features, weight2, bias2, out_features, residual, norm_weight,
                        norm_bias, norm_eps):
        return x.new_empty((*x.shape[:-1], out_features))

    @torch.library.register_fake("armour_kernels::patch_rows")
    def _patch_rows_fake(x, patch_h, patch_w):
        gh, gw = x.shape[2] // patch_h, x.shape[3] // patch_w
        return x.new_empty((x.shape[0], gh * gw, x.shape[1] * patch_h * patch_w))

    @torch.library.register_fake("armour_kernels::dense_pack")
    def _dense_pack_fake(weight):  # packing happens on real weights only (serving preparation)
        raise RuntimeError("armour_kernels::dense_pack packs concrete weights; call it outside tracing")


def dense_pack(weight: Tensor) -> Tensor:
    """`weight` (out, in) in the layout the CPU dense op runs fastest with here (docs/dense.md): oneDNN's
    fp32 micro-kernel blocks, bf16 VNNI blocks for AMX, or the weight itself where neither applies."""
    if _DENSE_PACK is None:
        raise RuntimeError("dense_pack needs the C++ extension (armour_kernels._C)")
    return _DENSE_PACK(weight.detach())


def dense(x: Tensor, packed: Tensor, bias: Optional[Tensor], out_features: int, *, act: str = "none",
          act_in: bool = False, residual: Optional[Tensor] = None, norm: Optional[tuple] = None) -> Tensor:
    """act(act_in(x) @ Wᵀ + bias) + residual on the CPU dense op, `packed` = dense_pack(W); inference only.
    norm = (weight, bias, eps): LayerNorm(x) over its last dim first (weight / bias may be None)."""
    if act not in ACTIVATIONS:
        raise ValueError(f"dense: act must be one of {ACTIVATIONS}, got {act!r}")
    if norm is None:
        return _DENSE(x, packed, bias, residual, int(Activation[act.upper()]), act_in, out_features)
    return _DENSE(x, packed, bias, residual, int(Activation[act.upper()]), act_in, out_features, *norm)


def layer_norm_args(module: nn.Module) -> tuple:
    """(weight, bias, eps) of an nn.LayerNorm over the last dim: the `norm` argument of linear_act / mlp."""
    if not isinstance(module, nn.LayerNorm) or len(module.normalized_shape) != 1:
        raise TypeError(f"{OP}: norm must be an nn.LayerNorm over the last dim, got {module!r}")
    return module.weight, module.bias, float(module.eps)


def _layer_norm(x: Tensor, norm: Optional[tuple]) -> Tensor:
    """LayerNorm(x) over the last dim with norm = (weight, bias, eps), or x when norm is None."""
    if norm is None:
        return x
    weight, bias, eps = norm
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


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
               inplace_input: bool = False, packed: Optional[Tensor] = None, norm: Optional[tuple] = None) -> Tensor:
    """act(act_in(x) @ weightᵀ + bias) [+ residual]; act_in (bool) applies Hardswish to x first.

    x (..., in), weight (out, in), bias (out,) or None, residual (..., out) or None (added after
    the activation). `inplace_input`: the caller owns x and lets the input Hardswish overwrite it
    (only honoured when no gradient is wanted). `packed`: dense_pack(weight), made once by a
    served model (armour_kernels.optimize): its CPU inference calls run the dense op on it.
    `norm` = (weight, bias, eps) (`layer_norm_args(nn.LayerNorm)`): LayerNorm on x first, instead
    of act_in — a pre-norm block's norm, which the dense op applies to the rows it is about to read.
    """
    device = _check(x, weight, bias, act, residual)
    if norm is not None:
        if act_in:
            raise ValueError(f"{OP}: act_in and norm exclude each other")
        if packed is not None and not wants_grad(norm[0], norm[1]):
            kernel, path, dtype = linear_act_path(x, weight, bias, act, act_in, residual, backend, None, packed)
            if path == "dense":
                return dense(x, packed, bias, weight.shape[0], act=act, residual=residual, norm=norm)
        x = _layer_norm(x, norm)  # every other path: the norm as PyTorch computes it
    kernel, path, dtype = linear_act_path(x, weight, bias, act, act_in, residual, backend, None, packed)
    if path == "dense":
        return dense(x, packed, bias, weight.shape[0], act=act, act_in=act_in, residual=residual)
    if path == "aten" or path == "onednn":  # CPU inference
        x = F.hardswish(x, inplace=inplace_input) if act_in else x
        return _cpu().linear(x, weight, bias, act, dtype, residual, path)
    if path == "triton-infer":
        cast = (x.to(dtype), weight.to(dtype), _cast(bias, dtype))
        if residual is None or residual.dtype == dtype:
            return _linear_act_infer(*cast, act_in, act == "hardswish", residual)
        return _add(_linear_act_infer(*cast, act_in, act == "hardswish"), residual)
    if path == "autograd-op":
        cast = (x.to(dtype), weight.to(dtype), _cast(bias, dtype))  # the C++ kernel widens float16 inside
        return _add(_linear_hardswish(*cast, kernel), residual)
    inplace = inplace_input and not wants_grad(x, weight, bias, residual)
    return _torch_linear_act(x, weight, bias, act, act_in, residual, inplace)


def linear_hardswish(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """hardswish(x @ weight.T + bias) in one fused kernel with autograd: x (..., in), weight (out, in),
    bias (out,) or None, all one dtype."""
    _check(x, weight, bias, "hardswish")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"linear_hardswish: {name} is {t.dtype}, x is {x.dtype}")
    return _linear_hardswish(x, weight, bias, select(OP, x.device, backend))


def mlp(x: Tensor, fc1: tuple, fc2: tuple, *, act: str, residual: Optional[Tensor] = None,
        backend: str = "auto", packed: tuple = (None, None), chunk_batches: bool = True,
        norm: Optional[tuple] = None) -> Tensor:
    """fc2(act(fc1(norm(x)))) [+ residual]; fc1, fc2 = (weight, bias or None); packed: their dense_pack
    weights (a served model) or Nones; norm: an input LayerNorm as linear_act's, or None.

    CPU inference: oneDNN in row chunks, so the hidden activation never exists for the whole batch;
    with packed weights, two dense-op calls, in row chunks too — also while compiling, unless
    chunk_batches=False (a batch-dynamic graph: a chunk count would fix its batch size)."""
    (w1, b1), (w2, b2) = fc1, fc2
    if packed[0] is not None and packed[1] is not None:
        return _packed_mlp(x, fc1, fc2, act, residual, backend, packed, chunk_batches, norm)
    x = _layer_norm(x, norm)
    dtype = compute_dtype(x)
    grad = wants_grad(x, w1, b1, w2, b2, residual)
    if act in TORCH_ACTIVATIONS and cpu_inference(select(OP, x.device, backend), dtype, x, grad):
        _check(x, w1, b1, act)
        return _cpu().mlp(x, (w1, b1), act, (w2, b2), dtype, residual=residual)
    hidden = linear_act(x, w1, b1, act=act, backend=backend)
    return linear_act(hidden, w2, b2, residual=residual, backend=backend)


def _packed_mlp(x, fc1, fc2, act, residual, backend, packed, chunk_batches=True, norm=None):
    """mlp() on packed weights. Where both layers run the dense op: one dense_mlp call, which keeps each
    block of rows' hidden activation in cache (docs/dense.md). Otherwise two linear_act calls, in row
    chunks when the hidden activation would be large, as the oneDNN path does (cpu/linear_act.py:
    CHUNK_BYTES; above glibc's 32 MiB mmap threshold every call's hidden buffer would page-fault afresh)."""
    (w1, b1), (w2, b2) = fc1, fc2
    if _fused_mlp(x, fc1, fc2, residual, backend, packed, norm):
        weight, bias, eps = norm if norm is not None else (None, None, None)
        return _DENSE_MLP(x, packed[0], b1, int(Activation[act.upper()]), w1.shape[0], packed[1], b2, w2.shape[0],
                          residual, weight, bias, eps)
    rows = x.reshape(-1, x.shape[-1])
    step = _cpu()._chunks(w1.shape[0], x.element_size())  # the oneDNN MLP's rows per chunk
    # Compiled, only a hidden buffer above MMAP_BYTES is cut (Armour-Ti fp32 batch 64, 2 threads, 39 MB:
    # 7-16% faster cut; below it the heap serves the buffer warm and a cut only adds calls), and never
    # in a batch-dynamic graph (chunk_batches=False: the chunk count would specialise its batch).
    if torch.compiler.is_compiling() and (
            not chunk_batches or rows.shape[0] * w1.shape[0] * x.element_size() <= _cpu().MMAP_BYTES):
        step = rows.shape[0]
    if rows.shape[0] <= step:
        hidden = linear_act(x, w1, b1, act=act, backend=backend, packed=packed[0], norm=norm)
        return linear_act(hidden, w2, b2, residual=residual, backend=backend, packed=packed[1])
    res = None if residual is None else residual.reshape(-1, w2.shape[0])
    outs = []
    for start in range(0, rows.shape[0], step):
        hidden = linear_act(rows[start:start + step], w1, b1, act=act, backend=backend, packed=packed[0], norm=norm)
        outs.append(linear_act(hidden, w2, b2, backend=backend, packed=packed[1],
                               residual=None if res is None else res[start:start + step]))
    return torch.cat(outs).view(*x.shape[:-1], w2.shape[0])


def _fused_mlp(x, fc1, fc2, residual, backend, packed, norm) -> bool:
    """Whether both MLP layers would run the dense op (linear_act's "dense" path for each): then dense_mlp."""
    (w1, b1), (w2, b2) = fc1, fc2
    if _DENSE_MLP is None or linear_act_path(x, w1, b1, "none", False, None, backend, None, packed[0])[1] != "dense":
        return False
    dtype = x.dtype
    return (packed[1].dtype == dtype and (b2 is None or b2.dtype == dtype)
            and (residual is None or residual.dtype == dtype) and not wants_grad(w2, b2, residual)
            and (norm is None or not wants_grad(norm[0], norm[1])))


def conv_chain(x: Tensor, layers: list, *, backend: str = "auto", chunk_batches: bool = True) -> Tensor:
    """Convolutions with activations, in order: layers = [(weight, bias, stride, padding, act)], x (B, C, H, W).

    CPU inference: one channels-last oneDNN chain with each activation as a post-op, a few images
    at a time, the first layer on the image_conv op when the image has few channels (the result is
    then channels-last); compiled, image_conv and F.conv2d, in image chunks too unless
    chunk_batches=False (a batch-dynamic graph: a chunk count would fix its batch size). Elsewhere:
    F.conv2d and the activation, layer by layer (bfloat16 on a CPU without oneDNN's bf16 kernels: in
    float32 on the bf16 values, plan.conv_widened)."""
    dtype = compute_dtype(x)
    grad = wants_grad(x, *(t for layer in layers for t in layer[:2]))
    kernel = select(OP, x.device, backend)
    if cpu_inference(kernel, dtype, x, grad):
        return _cpu().conv_chain(x, layers, dtype)
    if image_conv_first(kernel, dtype, x, layers[0], grad):  # compiling: the op, then inductor's convolutions
        images = _cpu().images_per_chunk(x, layers[0], dtype)
        if chunk_batches and x.shape[0] > images:
            # A static batch in image chunks, as eagerly: the chain's large intermediates (LeViT's first
            # output is 51 MB at batch 64) would otherwise be fresh memory-mapped pages on every call.
            outs = [conv_chain(chunk, layers, backend=backend) for chunk in x.split(images)]
            return torch.cat(outs).contiguous(memory_format=torch.channels_last)
        x, layers = image_conv(x.to(dtype), *layers[0]), layers[1:]
    wide = conv_widened(kernel, dtype)
    for weight, bias, stride, padding, act in layers:
        if wide:  # no bf16 convolution here: fp32 on the bf16 values (exact products), rounded once
            y = F.conv2d(x.float(), weight.float(), _cast(bias, torch.float32), stride, padding)
            x = TORCH_ACTIVATIONS[act](y).to(dtype)
        else:
            x = TORCH_ACTIVATIONS[act](F.conv2d(x, weight, bias, stride, padding))
    return x


def image_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, act: str = "none") -> Tensor:
    """act(conv2d(x, weight, bias, stride, padding)) on the CPU image_conv op (inference only): x an NCHW
    image of few channels, any strides; stride / padding an int or a square pair; weight and bias
    are cast to x's dtype. The result is channels-last."""
    if act not in ACTIVATIONS:
        raise ValueError(f"image_conv: act must be one of {ACTIVATIONS}, got {act!r}")
    stride, padding = _square("stride", stride), _square("padding", padding)
    return _IMAGE_CONV(x, weight.to(x.dtype), _cast(bias, x.dtype), stride, padding, int(Activation[act.upper()]))


def patch_rows(x: Tensor, patch: tuple) -> Tensor:
    """Images (B, C, H, W) as patchify-GEMM rows (B, (H // p) · (W // q), C · p · q), patch = (p, q): each row
    one patch flattened (C, p, q), pixels past the last whole patch dropped (a convolution's floor).
    On the CPU without a gradient the patch_rows op (one ATen copy the compiled graph cannot re-index:
    nn/patch_embed.py); elsewhere the same reshape / permute in PyTorch."""
    p, q = patch
    B, C, H, W = x.shape
    if _PATCH_ROWS is not None and x.device.type == "cpu" and not wants_grad(x):
        return _PATCH_ROWS(x, p, q)
    gh, gw = H // p, W // q
    patches = x[:, :, :gh * p, :gw * q].reshape(B, C, gh, p, gw, q).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(B, gh * gw, C * p * q)


def _square(name: str, value) -> int:
    if isinstance(value, int):
        return value
    if len(value) != 2 or value[0] != value[1]:
        raise ValueError(f"image_conv: {name} must be an int or a square pair, got {value!r}")
    return int(value[0])


__all__ = ["linear_act", "linear_hardswish", "mlp", "conv_chain", "image_conv", "dense", "dense_pack", "activation_of", "compute_dtype",
           "layer_norm_args", "patch_rows", "TORCH_ACTIVATIONS"]
