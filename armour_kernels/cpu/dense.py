"""CPU inference GEMMs and convolutions with fused epilogues, on oneDNN: the dense layers around attention.

Why this exists. In a patched DeiT-Ti or LeViT on CPU most of the time is not attention but the
Linear / 1×1 / stem-conv layers and the elementwise passes between them. Three measured causes
(AMD EPYC Zen 5, 2 threads, fp32; bench/results/cpu-amd-epyc-2core/):

1. ATen's fp32 `F.linear` runs MKL's sgemm, which on this AMD CPU reaches ~190 GFLOP/s; oneDNN's
   GEMM (which PyTorch ships, `torch.ops.mkldnn._linear_pointwise`) reaches ~440 GFLOP/s on the
   same shapes (DeiT-Ti / LeViT GEMMs: M = 1k-12k rows, K and N = 128-768).
2. Every separate activation / bias / residual pass reads and writes the whole activation;
   oneDNN applies them as post-ops while the output tile is still in registers.
3. glibc serves allocations above 32 MiB with fresh mmap'ed pages, so every large intermediate
   (DeiT-Ti's MLP hidden at batch 64: 39 MB; LeViT's first stem output: 51 MB) page-faults on
   every call: an out-of-place activation over 51 MB costs 19 ms against 1.5 ms in place.
   `mlp` and `conv_stem` therefore work in row / image chunks whose intermediates stay a few MB
   (in cache, and served from the malloc heap).

Only for inference: the oneDNN ops have no autograd formula. `serves(...)` says when they apply
(CPU, float32 / bfloat16 compute, oneDNN built, no gradient wanted, not being compiled); callers
keep their PyTorch path for everything else, which is also exactly what the unpatched model runs (never slower
than not patching). Under CPU autocast the compute dtype is autocast's, as for F.linear.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["available", "serves", "compute_dtype", "linear", "mlp", "conv_stem", "activation_of",
           "CHUNK_BYTES"]

# Target size of one chunk's intermediate (MLP hidden rows, stem first-conv output): small enough
# to stay in L2/L3 and under glibc's mmap threshold, large enough for full-speed GEMMs.
# Swept on DeiT-Ti / LeViT-128S at batch 64 (2-12 MB within noise; 51 MB unchunked ~2x slower).
CHUNK_BYTES = 6 << 20

# nn activation → (oneDNN post-op, its algorithm); other activations run unfused.
_ONEDNN_ACTS = {"none": ("none", ""), "relu": ("relu", ""), "hardswish": ("hardswish", ""),
                "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "silu": ("swish", "")}


# Decided once at import (constants, so torch.compile traces `serves` without graph breaks).
_AVAILABLE = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
              and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))
_BF16 = _AVAILABLE and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def available() -> bool:
    """True when this PyTorch has oneDNN and its fused inference ops."""
    return _AVAILABLE


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would compute in here (autocast's, when autocast is on for x's device)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _dtype_ok(dtype: torch.dtype) -> bool:
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and _BF16


def serves(backend: str, x: torch.Tensor, *params) -> bool:
    """Whether the oneDNN inference path runs this call: backend auto / cpu, CPU tensors, fp32 or bf16
    compute, oneDNN present, and no gradient wanted (grad mode off, or nothing requires grad).

    Not under torch.compile: inductor lowers these oneDNN ops only with frozen (constant) weights,
    and picks its own GEMMs for the plain path it is given instead."""
    if torch.compiler.is_compiling():
        return False
    if backend not in ("auto", "cpu") or x.device.type != "cpu" or not _AVAILABLE:
        return False
    if not _dtype_ok(compute_dtype(x)):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p is not None and p.requires_grad for p in params)):
        return False
    return True


def activation_of(module: nn.Module) -> str | None:
    """The post-op name of an activation module ("none" for Identity), or None when oneDNN has none."""
    if module is None or isinstance(module, nn.Identity):
        return "none"
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    for cls, name in ((nn.Hardswish, "hardswish"), (nn.ReLU, "relu"), (nn.SiLU, "silu")):
        if isinstance(module, cls):
            return name
    return None


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, act: str = "none",
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """act(x @ weightᵀ + bias) [+ residual] on oneDNN; x (..., in) → (..., out), in the compute dtype.

    `residual` (same shape as the result) is added after the activation, in place into the fresh
    output when the dtypes agree (oneDNN's binary-add post-op measured no faster than that on the
    AMD EPYC CI machine, and slower in fp32), else promoted as `y + residual` would be.
    Call only where `serves(...)` is true.
    """
    dtype = compute_dtype(x)
    rows = x.reshape(-1, x.shape[-1]).to(dtype)
    w, b = weight.to(dtype), _cast(bias, dtype)
    out_shape = (*x.shape[:-1], weight.shape[0])
    attr, algorithm = _ONEDNN_ACTS[act]
    y = torch.ops.mkldnn._linear_pointwise(rows, w, b, attr, [], algorithm).view(out_shape)
    return _add_residual(y, residual)


def _add_residual(y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """y + residual, in place into y (a fresh GEMM output) when no dtype promotion is needed."""
    if residual is None:
        return y
    return y.add_(residual) if residual.dtype == y.dtype else y + residual


def _chunks(width: int, itemsize: int) -> int:
    """Rows per chunk so that a (rows, width) intermediate is about CHUNK_BYTES."""
    return max(64, CHUNK_BYTES // max(1, width * itemsize))


def mlp(x: torch.Tensor, fc1: tuple, act: str, fc2: tuple, residual: torch.Tensor | None = None) -> torch.Tensor:
    """fc2(act(fc1(x))) [+ residual], in row chunks: the hidden activation of a chunk stays in cache
    and is never materialised for the whole batch. fc1 / fc2: (weight, bias). Exact (row-independent)."""
    dtype = compute_dtype(x)
    (w1, b1), (w2, b2) = fc1, fc2
    w1, b1, w2, b2 = w1.to(dtype), _cast(b1, dtype), w2.to(dtype), _cast(b2, dtype)
    rows = x.reshape(-1, x.shape[-1]).to(dtype)
    res = None if residual is None else residual.reshape(-1, w2.shape[0])
    attr, algorithm = _ONEDNN_ACTS[act]
    step = _chunks(w1.shape[0], rows.element_size())
    outs = []
    for start in range(0, rows.shape[0], step):
        hidden = torch.ops.mkldnn._linear_pointwise(rows[start:start + step], w1, b1, attr, [], algorithm)
        out = torch.ops.mkldnn._linear_pointwise(hidden, w2, b2, "none", [], "")
        outs.append(_add_residual(out, None if res is None else res[start:start + step]))  # while in cache
    y = outs[0] if len(outs) == 1 else torch.cat(outs)
    return y.view(*x.shape[:-1], w2.shape[0])


def conv_stem(x: torch.Tensor, layers: list) -> torch.Tensor:
    """A chain of convolutions with fused activations over image chunks, channels-last.

    layers: (conv weight, bias, stride, padding, act) per convolution, applied in order. The
    batch is cut so that the first layer's output per chunk is about CHUNK_BYTES. The result is
    channels-last (B, C, H, W) — its `.flatten(2).transpose(1, 2)` tokens are contiguous.
    """
    dtype = compute_dtype(x)
    params = [(w.to(dtype), _cast(b, dtype), stride, padding, _ONEDNN_ACTS[act])
              for w, b, stride, padding, act in layers]
    w0, _, s0, _, _ = params[0]
    first_out = w0.shape[0] * (x.shape[2] // s0[0]) * (x.shape[3] // s0[1]) * (torch.finfo(dtype).bits // 8)
    images = max(1, CHUNK_BYTES // max(1, first_out))
    outs = []
    for chunk in x.split(images):
        # cast, then relayout: 2.4x faster than one fused .to(dtype, memory_format) (strided cast kernel)
        h = chunk.to(dtype).contiguous(memory_format=torch.channels_last)
        for w, b, stride, padding, (attr, algorithm) in params:
            h = torch.ops.mkldnn._convolution_pointwise(h, w, b, list(padding), list(stride), [1, 1], 1,
                                                        attr, [], algorithm)
        outs.append(h)
    if len(outs) == 1:
        return outs[0]
    return torch.cat(outs).contiguous(memory_format=torch.channels_last)
