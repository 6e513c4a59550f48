"""CPU launchers of the Linear + activation family: oneDNN GEMMs / convolutions with fused epilogues
(inference) and the C++ Linear + Hardswish kernel (with autograd, through the op).

Why the oneDNN path exists. In a patched DeiT-Ti or LeViT on CPU most of the time is not attention but the
Linear / 1×1 / stem-conv layers and the elementwise passes between them. Three measured causes
(AMD EPYC Zen 4, 2 threads, fp32; bench/results/cpu-amd-epyc-avx512bf16-2core/):

1. ATen's fp32 `F.linear` runs MKL's sgemm, which on this AMD CPU reaches ~190 GFLOP/s; oneDNN's
   GEMM (which PyTorch ships, `torch.ops.mkldnn._linear_pointwise`) reaches ~440 GFLOP/s on the
   same shapes (DeiT-Ti / LeViT GEMMs: M = 1k-12k rows, K and N = 128-768).
2. Every separate activation / bias / residual pass reads and writes the whole activation;
   oneDNN applies them as post-ops while the output tile is still in registers.
3. glibc serves allocations above 32 MiB with fresh mmap'ed pages, so every large intermediate
   (DeiT-Ti's MLP hidden at batch 64: 39 MB; LeViT's first stem output: 51 MB) page-faults on
   every call: an out-of-place activation over 51 MB costs 19 ms against 1.5 ms in place.
   `mlp` and `conv_chain` therefore work in row / image chunks whose intermediates stay a few MB
   (in cache, and served from the malloc heap).

The oneDNN functions have no autograd formula: armour_kernels.ops.linear_act calls them only in
inference (docs/linear_act.md), in the compute dtype it passes (autocast's, as F.linear would).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from torch.utils.weak import WeakTensorKeyDictionary

from .. import plan
from ..plan import image_conv_first
from . import _require

# Target size of one chunk's intermediate (MLP hidden rows, stem first-conv output): small enough
# to stay in L2/L3 and under glibc's mmap threshold, large enough for full-speed GEMMs.
# Swept on DeiT-Ti / LeViT-128S at batch 64 (2-12 MB within noise; 51 MB unchunked ~2x slower).
CHUNK_BYTES = 6 << 20
# glibc's largest mmap threshold on 64-bit: a buffer above it is always a fresh mapping (page faults on
# every call); below it the heap serves it again warm.
MMAP_BYTES = 32 << 20

# Activation name (armour_kernels.constants.ACTIVATIONS) → (oneDNN post-op, its algorithm).
ONEDNN_ACTIVATIONS = {"none": ("none", ""), "relu": ("relu", ""), "hardswish": ("hardswish", ""),
                      "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "silu": ("swish", "")}


# Decided once at import.
_AVAILABLE = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
              and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))
_BF16 = _AVAILABLE and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def available(dtype: torch.dtype) -> bool:
    """True when this PyTorch has oneDNN's fused inference ops for `dtype` (float32, or bfloat16 where supported)."""
    return _AVAILABLE and (dtype == torch.float32 or (dtype == torch.bfloat16 and _BF16))


# ----------------------------------------------------------------------------- weights, prepared once

# Parameter → ((its version, its storage, dtype), the weight in dtype in oneDNN's own blocked layout).
# Handing oneDNN a plain weight makes it reorder (and, under autocast, cast) the weight on every
# call; for bf16 on AMX that reorder cost as much as the GEMM itself at LeViT's shapes.
_PACKED = WeakTensorKeyDictionary()
_CAST = WeakTensorKeyDictionary()


def _key(t: torch.Tensor, dtype: torch.dtype):
    # In-place updates (optimizer steps, load_state_dict, `with torch.no_grad(): w.add_(…)`) move the
    # version counter; assigning `.data` moves the storage. Writing through `w.data[...]` does
    # neither: call clear_weight_cache() after such a write.
    return t._version, t.untyped_storage().data_ptr(), t.storage_offset(), dtype


def packed_weight(weight: torch.Tensor, dtype: torch.dtype, rows: int) -> torch.Tensor:
    """`weight` (out, in) cast to `dtype` and reordered for oneDNN, made once per parameter version.

    Inference tensors (made under torch.inference_mode) have no version counter: they are prepared
    on every call."""
    key = None if weight.is_inference() else _key(weight, dtype)
    hit = _PACKED.get(weight) if key is not None else None
    if hit is not None and hit[0] == key:
        return hit[1]
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype).contiguous(), max(1, rows))
    if key is not None:
        _PACKED[weight] = (key, packed)
    return packed


def packed_conv_weight(weight: torch.Tensor, dtype: torch.dtype, stride, padding, input_size) -> torch.Tensor:
    """A conv weight cast to `dtype` and reordered for oneDNN for inputs like `input_size`, once per
    parameter version (15–20% of LeViT's stem at batch 1). The layout is valid for any batch size."""
    key = None if weight.is_inference() else (*_key(weight, dtype), tuple(stride), tuple(padding),
                                              tuple(input_size[1:]))
    hit = _PACKED.get(weight) if key is not None else None
    if hit is not None and hit[0] == key:
        return hit[1]
    packed = torch.ops.mkldnn._reorder_convolution_weight(weight.detach().to(dtype).contiguous(), list(padding),
                                                          list(stride), [1, 1], 1, list(input_size))
    if key is not None:
        _PACKED[weight] = (key, packed)
    return packed


def cast_once(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """`t` in `dtype` (a bias, a conv weight), cast once per parameter version."""
    if t is None or t.dtype == dtype:
        return t
    if t.is_inference():
        return t.to(dtype)
    key = _key(t, dtype)
    hit = _CAST.get(t)
    if hit is not None and hit[0] == key:
        return hit[1]
    cast = t.detach().to(dtype)
    _CAST[t] = (key, cast)
    return cast


def clear_weight_cache() -> None:
    """Forget every prepared weight (they are rebuilt on the next call)."""
    _PACKED.clear()
    _CAST.clear()


# In-place activations for the ATen path (the GEMM output is fresh, so nobody else sees it).
_INPLACE = {"none": lambda y: y, "hardswish": torch._C._nn.hardswish_, "relu": torch.relu_,
            "gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
            "silu": lambda y: F.silu(y, inplace=True)}


def _gemm(rows: torch.Tensor, weight: torch.Tensor, bias, act: str, dtype: torch.dtype) -> torch.Tensor:
    """act(rows @ weightᵀ + bias) for 2-D rows already in `dtype`, on the engine that is faster at this size."""
    if plan.gemm_engine(2 * rows.shape[0] * rows.shape[1] * weight.shape[0], dtype) == "aten":
        return _INPLACE[act](F.linear(rows, cast_once(weight, dtype), cast_once(bias, dtype)))
    attr, algorithm = ONEDNN_ACTIVATIONS[act]
    return torch.ops.mkldnn._linear_pointwise(rows, packed_weight(weight, dtype, rows.shape[0]),
                                              cast_once(bias, dtype), attr, [], algorithm)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str, dtype: torch.dtype,
           residual: torch.Tensor | None = None, engine: str | None = None) -> torch.Tensor:
    """act(x @ weightᵀ + bias) [+ residual] in `dtype`; x (..., in) → (..., out).

    engine: "aten" or "onednn" as armour_kernels.plan.linear_act_plan chose it (None: asked here).

    `residual` (same shape as the result) is added after the activation, in place into the fresh
    output when the dtypes agree (oneDNN's binary-add post-op measured no faster than that on the
    AMD EPYC CI machine, and slower in fp32), else promoted as `y + residual` would be.
    """
    if engine is None:
        engine = plan.gemm_engine(2 * x.numel() * weight.shape[0], dtype)
    if (engine == "aten" and x.dtype == dtype
            and weight.dtype == dtype and (bias is None or bias.dtype == dtype)):
        # A small GEMM already in its dtype: ATen's, on x as it is (no reshape, cast or view; a
        # tiny call is mostly such per-call work).
        return _add_residual(_INPLACE[act](F.linear(x, weight, bias)), residual)
    y = _gemm(x.reshape(-1, x.shape[-1]).to(dtype), weight, bias, act, dtype)
    return _add_residual(y.view(*x.shape[:-1], weight.shape[0]), residual)


def _add_residual(y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """y + residual, in place into y (a fresh GEMM output) when no dtype promotion is needed."""
    if residual is None:
        return y
    return y.add_(residual) if residual.dtype == y.dtype else y + residual


def _chunks(width: int, itemsize: int) -> int:
    """Rows per chunk so that a (rows, width) intermediate is about CHUNK_BYTES."""
    return max(64, CHUNK_BYTES // max(1, width * itemsize))


def mlp(x: torch.Tensor, fc1: tuple, act: str, fc2: tuple, dtype: torch.dtype,
        residual: torch.Tensor | None = None) -> torch.Tensor:
    """fc2(act(fc1(x))) [+ residual], in row chunks: the hidden activation of a chunk stays in cache
    and is never materialised for the whole batch. fc1 / fc2: (weight, bias). Exact (row-independent)."""
    (w1, b1), (w2, b2) = fc1, fc2
    rows = x.reshape(-1, x.shape[-1]).to(dtype)
    res = None if residual is None else residual.reshape(-1, w2.shape[0])
    step = _chunks(w1.shape[0], rows.element_size())
    outs = []
    for start in range(0, rows.shape[0], step):
        hidden = _gemm(rows[start:start + step], w1, b1, act, dtype)
        out = _gemm(hidden, w2, b2, "none", dtype)
        outs.append(_add_residual(out, None if res is None else res[start:start + step]))  # while in cache
    y = outs[0] if len(outs) == 1 else torch.cat(outs)
    return y.view(*x.shape[:-1], w2.shape[0])


def images_per_chunk(x: torch.Tensor, first_layer, dtype: torch.dtype) -> int:
    """Images per chunk of a conv chain on x (B, C, H, W): the first layer's output per chunk about CHUNK_BYTES."""
    w0, _, s0, _, _ = first_layer
    first_out = w0.shape[0] * (x.shape[2] // s0[0]) * (x.shape[3] // s0[1]) * (torch.finfo(dtype).bits // 8)
    return max(1, CHUNK_BYTES // max(1, first_out))


def conv_chain(x: torch.Tensor, layers: list, dtype: torch.dtype) -> torch.Tensor:
    """A chain of convolutions with fused activations over image chunks, channels-last.

    layers: (conv weight, bias, stride, padding, act) per convolution, applied in order. The
    batch is cut so that the first layer's output per chunk is about CHUNK_BYTES. The result is
    channels-last (B, C, H, W) — its `.flatten(2).transpose(1, 2)` tokens are contiguous.
    """
    first = image_conv_first("cpu", dtype, x, layers[0], False)
    if first:
        from ..ops.linear_act import image_conv  # the op's functional form (casts, activation code)
    outs = []
    for chunk in x.split(images_per_chunk(x, layers[0], dtype)):
        if first:  # straight from the NCHW image (plan.image_conv_first)
            h, rest = image_conv(chunk.to(dtype), *layers[0]), layers[1:]
        else:
            # cast, then relayout: 2.4x faster than one fused .to(dtype, memory_format) (strided cast kernel)
            h, rest = chunk.to(dtype).contiguous(memory_format=torch.channels_last), layers
        for w, b, stride, padding, act in rest:
            attr, algorithm = ONEDNN_ACTIVATIONS[act]
            h = torch.ops.mkldnn._convolution_pointwise(h, packed_conv_weight(w, dtype, stride, padding, h.shape),
                                                        cast_once(b, dtype), list(padding), list(stride), [1, 1], 1,
                                                        attr, [], algorithm)
        outs.append(h)
    if len(outs) == 1:
        return outs[0]
    return torch.cat(outs).contiguous(memory_format=torch.channels_last)


def linear_hardswish_forward(x, weight, bias=None, *, gemm="auto"):
    """hardswish(x @ weight.T + bias) on the C++ kernel, same dtype and leading shape as x; float16 is
    computed in float32 and cast back.

    gemm: "onednn_fused" (oneDNN with bias + Hardswish as its post-op), "onednn" / "aten" (that GEMM,
    then one vectorised bias + Hardswish pass in place instead of addmm's bias pass plus a separate
    Hardswish and its allocation), "auto" (onednn_fused when torch has oneDNN, else aten).
    """
    C = _require()
    if x.dtype == torch.float16:
        y = C.linear_hardswish(x.float(), weight.float(), None if bias is None else bias.float(), gemm)
        return y.half()
    return C.linear_hardswish(x, weight, bias, gemm)


__all__ = ["available", "linear", "mlp", "conv_chain", "images_per_chunk", "linear_hardswish_forward", "packed_weight",
           "packed_conv_weight", "cast_once",
           "clear_weight_cache", "ONEDNN_ACTIVATIONS", "CHUNK_BYTES"]
