"""What runs a call: one plan function per kernel family, and the only place their rules live.

Each function takes a call's tensors and options and returns a `Plan` (frozen):

    op              the op's name ("attention", "linear_act", "nystrom_attention", "performer_attention")
    backend         "triton", "cpu" or "reference": backend.select's answer (the backend rule stays there)
    path            how the call reaches its kernel:
                      "dispatcher"          the dispatcher op armour_kernels::<op> (C++ kernel on CPU
                                            tensors, Triton launcher on CUDA tensors, autograd in C++)
                      "triton-interpreter"  the Triton launchers as Python custom ops on CPU tensors
                                            (TRITON_INTERPRET=1; the dispatcher would pick the C++ kernel)
                      "triton-op"           the same custom ops on CUDA when the extension is not built
                      "reference"           python_ref with PyTorch autograd
                      "onednn", "aten"      linear_act's CPU inference engines (oneDNN GEMM with fused
                                            post-ops, or ATen's GEMM and the activation in place)
                      "triton-infer"        linear_act's Triton inference GEMM (no autograd)
                      "autograd-op"         the fused Linear + Hardswish op with autograd
                      "torch"               plain PyTorch (F.linear and the activation)
    compute_dtype   the dtype the products run in (accumulation is float32 at least everywhere)
    min_flops       the FLOP count from which linear_act's CPU inference uses oneDNN (None elsewhere)
    empty           True when the call has nothing to compute and the answer is an empty output or zeros
    isa             (property) the CPU dispatch path of the C++ kernels, armour_kernels.cpu.isa(), read
                    when asked (it can change with cpu.use_isa); None when no C++ kernel runs

The ops ask on every call, so the asking is cheap: attention and linear_act ask the lean
`attention_path` / `linear_act_path` (the rules themselves; the plan functions wrap them), a plan
is a cached object per distinct answer, never built per call, and everything traces under
torch.compile(fullgraph=True). `explain(op, *tensors, **options)` is the public question
"what would run here?". docs/backends.md describes the rules.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from . import cpu
from .backend import select, wants_grad

# ----------------------------------------------------------------------------- the plan object


@dataclasses.dataclass(frozen=True, repr=False)
class Plan:
    op: str
    backend: str
    path: str
    compute_dtype: torch.dtype
    empty: bool = False
    min_flops: Optional[float] = None

    @property
    def isa(self) -> Optional[str]:
        """The C++ kernels' dispatch path ("amx", "avx512+brgemm", ...) when they run this call, else None."""
        native = self.backend == "cpu" and self.path in ("dispatcher", "autograd-op")
        return cpu.isa() if native and not self.empty else None

    def __repr__(self) -> str:  # the fields and the ISA read now: what explain() shows
        fields = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)]
        return f"Plan({', '.join(fields)}, isa={self.isa!r})"


_PLANS: dict = {}  # (op, backend, path, dtype, empty, min_flops) -> the one Plan with those fields


def _plan(op, backend, path, dtype, empty=False, min_flops=None) -> Plan:
    key = (op, backend, path, dtype, empty, min_flops)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = Plan(op, backend, path, dtype, empty, min_flops)
    return plan


def _cpu_kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The C++ kernels have no fp16 engine (no AMX-FP16, no fp16 brgemm on the CPUs served): float16
    is widened to float32 on the way in and rounded back once."""
    return torch.float32 if dtype == torch.float16 else dtype


def _triton_path(device: torch.device) -> str:
    """The dispatcher sends CPU tensors to the C++ kernel, so Triton on CPU tensors (the
    interpreter), and Triton without the built extension, run the launchers as Python custom ops."""
    if device.type != "cuda":
        return "triton-interpreter"
    return "dispatcher" if cpu.built() else "triton-op"


# ----------------------------------------------------------------------------- attention

ATTENTION = "attention"


def attention_empty(q, k) -> bool:
    """No query row (an empty output) or no key (zeros, as SDPA gives): docs/numerics.md. Every path
    answers these before any kernel runs (the C++ kernel checks the same)."""
    shape = q.shape
    return shape[0] * shape[1] * shape[2] == 0 or k.shape[1] == 0


def attention_path(q, backend: str = "auto") -> str:
    """The path of `attention(q, ...)`: what the op asks on every call (attention_plan adds the rest).
    One path for forward and backward (the dispatcher op's autograd is C++): grad or not does not
    change it."""
    backend = select(ATTENTION, q.device, backend)
    if backend == "cpu":
        return "dispatcher"
    return "reference" if backend == "reference" else _triton_path(q.device)


def attention_plan(q, k, *, backend: str = "auto") -> Plan:
    """The plan of `attention(q, k, ...)`. The C++ kernels compute float16 in float32; the reference
    computes in float32 at least (float16 scores overflow at |q·k| ≳ 250)."""
    path = attention_path(q, backend)
    backend = select(ATTENTION, q.device, backend)
    dtype = q.dtype
    if backend == "cpu":
        dtype = _cpu_kernel_dtype(dtype)
    elif backend == "reference":
        dtype = torch.promote_types(dtype, torch.float32)
    return _plan(ATTENTION, backend, path, dtype, attention_empty(q, k))


# ----------------------------------------------------------------------------- linear_act

LINEAR_ACT = "linear_act"
TRITON_ACTIVATIONS = ("none", "hardswish")  # what the Triton GEMM epilogue applies
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# A GEMM of fewer flops than this goes to ATen (MKL / its bf16 GEMM) with the activation applied in
# place after it, instead of to oneDNN: a oneDNN call has a fixed cost (primitive lookup) of some
# µs more than ATen's, more than the packed oneDNN GEMM gains on small fp32 products. Measured on
# Intel Xeon Sapphire Rapids, 1 thread (`armour-bench linear_act`, its engines table:
# bench/results/cpu-intel-xeon-amx-2core/linear_act-cpu.md): fp32 at LeViT-128S's 12.8 MFLOP
# layers ATen ties or wins (88 µs against 95 packed), at DeiT-Ti's 44-58 MFLOP layers packed oneDNN
# wins by 4-9%; bf16 (AMX) packed oneDNN wins at every size measured, down to 4.7 MFLOP.
ONEDNN_MIN_FLOPS = {torch.float32: 32e6, torch.bfloat16: 2e6}


# Rows per call above which a dtype's layers leave the dense op for oneDNN's matmul on its own packed
# weight (the eager plan) and inductor (a served graph): none now. bf16 had 512 while each AMX tile
# was one oneDNN brgemm call (0.6-0.75x oneDNN's matmul at 1024-12608 rows); with the AMX task kernel
# the op runs 0.8-1.2x oneDNN's packed linear at those sizes, and whole models served on the graph
# runner with it beat inductor's oneDNN layers (Sapphire Rapids, 2 threads, bf16: LeViT-128S batch 16
# / 64 1.20x / 1.03x, Armour-Ti 1.26x / 1.18x). fp32 runs the dense op at any size (level with or
# ahead of MKL's packed sgemm, and it fuses the residual). A CPU where a benchmark shows oneDNN ahead
# would set its limit here.
DENSE_MAX_ROWS: dict = {}


# A stem's first convolution reads the NCHW image with the image_conv op (csrc/kernels/image_conv.h)
# when the image has at most this many channels: there oneDNN, which vectorises over input channels,
# first needs a channels-last copy of the image. LeViT's 3 → 16 stride-2 3×3 convolution at batch 1,
# Sapphire Rapids, 1 thread: 143 µs against 237 (channels-last copy + oneDNN) warm, and ~0.3 ms
# less inside a served model, where the copy and oneDNN read the image from memory.
IMAGE_CONV_MAX_CHANNELS = 4
IMAGE_CONV_DTYPES = (torch.float32, torch.bfloat16)


def image_conv_first(backend: str, dtype: torch.dtype, x, layer, grad: bool) -> bool:
    """Whether a conv chain's first layer (weight, bias, stride, padding, act) runs on image_conv:
    backend "cpu", no gradient, float32 / bfloat16, an NCHW image of few channels, square stride and
    padding (also while compiling: the op is in the graph, inductor calls it)."""
    weight, _, stride, padding, _ = layer
    if backend != "cpu" or grad or dtype not in IMAGE_CONV_DTYPES or x.dim() != 4:
        return False
    if x.shape[1] > IMAGE_CONV_MAX_CHANNELS or stride[0] != stride[1] or padding[0] != padding[1]:
        return False
    from . import cpu
    return cpu.has_op("image_conv")


def gemm_engine(flops: int, dtype: torch.dtype) -> str:
    """"aten" or "onednn": the faster engine of the CPU inference path for a GEMM of `flops` in `dtype`."""
    return "aten" if flops < ONEDNN_MIN_FLOPS.get(dtype, 0) else "onednn"


def compute_dtype(x, device: Optional[torch.device] = None) -> torch.dtype:
    """The dtype F.linear computes in here: autocast's when autocast is on for x's device, else x's."""
    kind = (device or x.device).type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


_DENSE = []  # armour_kernels.cpu.linear_act, imported on first use (its oneDNN availability)


def _onednn_serves(dtype: torch.dtype) -> bool:
    """Whether this torch's oneDNN runs `dtype` on this CPU (float32; bfloat16 only with its bf16 kernels)."""
    if not _DENSE:
        from .cpu import linear_act as dense
        _DENSE.append(dense)
    return _DENSE[0].available(dtype)


def cpu_inference(backend: str, dtype: torch.dtype, x, grad: bool) -> bool:
    """Whether the dense layers run on the CPU inference engines (oneDNN / ATen with fused epilogues):
    backend "cpu", no gradient, something to compute, a dtype oneDNN serves (float32, bfloat16 where
    supported), and not being compiled (inductor then fuses and prepacks the GEMMs itself)."""
    if backend != "cpu" or grad or not x.numel() or torch.compiler.is_compiling():
        return False
    return _onednn_serves(dtype)


def conv_widened(backend: str, dtype: torch.dtype) -> bool:
    """Whether a conv chain computes its bfloat16 convolutions in float32, on the bfloat16 values and
    rounded once per layer (what a bf16 convolution accumulating in fp32 gives): backend "cpu" on a CPU
    where oneDNN has no bfloat16 kernels (AVX2 only), where ATen's own bf16 convolution is a slow
    reference loop (LeViT-128S's stem ~5x slower than fp32, AMD EPYC Zen 3)."""
    if backend != "cpu" or dtype != torch.bfloat16:
        return False
    return not _onednn_serves(dtype)


def dense_takes_rows(dtype: torch.dtype, x_shape) -> bool:
    """Whether the dense op serves an input of shape `x_shape` (rows × its last dimension) in `dtype`: any
    number of rows, except above the dtype's DENSE_MAX_ROWS where one is set. The graph runner asks it for
    the layers it moves onto the op."""
    if dtype not in DENSE_MAX_ROWS:
        return True
    width = x_shape[-1] if len(x_shape) else 1
    rows = math.prod(x_shape) // width if width else 0
    return rows <= DENSE_MAX_ROWS[dtype]


def linear_act_path(x, weight, bias, act, act_in, residual, backend, grad=None, packed=None) -> tuple:
    """(backend, path, compute dtype) of `linear_act(...)`: what the op asks on every call, positional
    and without a Plan object (linear_act_plan has the rules in words). grad: whether autograd wants
    a gradient (None: asked of the tensors). packed: the weight as dense_pack made it, or None."""
    device = x.device
    backend = select(LINEAR_ACT, device, backend)
    dtype = compute_dtype(x, device)
    if grad is None:
        grad = wants_grad(x, weight, bias, residual)
    if packed is not None and backend == "cpu" and not grad and dtype == x.dtype == packed.dtype \
            and (residual is None or residual.dtype == dtype) and (bias is None or bias.dtype == dtype) \
            and dense_takes_rows(dtype, x.shape):
        return backend, "dense", dtype
    if cpu_inference(backend, dtype, x, grad):
        return backend, gemm_engine(2 * x.numel() * weight.shape[0], dtype), dtype
    if backend == "triton" and act in TRITON_ACTIVATIONS and dtype in TRITON_DTYPES:
        if not grad and (act_in or act != "none" or residual is not None):  # a plain GEMM is cuBLAS's job
            return backend, "triton-infer", dtype
        if grad and act == "hardswish" and not act_in:
            return backend, "autograd-op", dtype
    if backend == "cpu" and grad and act == "hardswish" and not act_in and not torch.compiler.is_compiling():
        return backend, "autograd-op", dtype
    return backend, "torch", dtype


def linear_act_plan(x, weight, bias=None, *, act: str = "none", act_in: bool = False, residual=None,
                    backend: str = "auto", grad: Optional[bool] = None, packed=None) -> Plan:
    """The plan of `linear_act(x, weight, bias, act=, act_in=, residual=, packed=)` (docs/linear_act.md):

        "dense"            a packed weight (a served model, docs/dense.md), backend "cpu", no
                           gradient, everything in one dtype, rows within DENSE_MAX_ROWS (none set):
                           the C++ dense op (also when compiled)
        "onednn" / "aten"  backend "cpu" and cpu_inference(): by FLOPs, gemm_engine()
        "triton-infer"     backend "triton", no gradient, something to fuse (act_in, Hardswish or a
                           residual; a plain GEMM is cuBLAS's job), act and dtype the epilogue has
        "autograd-op"      a gradient wanted, Hardswish after the GEMM only, backend "triton", or
                           "cpu" when not being compiled
        "torch"            everything else ("reference", other activations with a gradient, CPU
                           under torch.compile, empty inputs on the CPU)

    The compute dtype is autocast's under autocast, as for F.linear; the C++ Linear + Hardswish
    kernel computes float16 in float32."""
    backend, path, dtype = linear_act_path(x, weight, bias, act, act_in, residual, backend, grad, packed)
    if path == "autograd-op" and backend == "cpu":
        dtype = _cpu_kernel_dtype(dtype)
    min_flops = ONEDNN_MIN_FLOPS.get(dtype, 0) if path in ("aten", "onednn") else None
    return _plan(LINEAR_ACT, backend, path, dtype, not x.numel(), min_flops)


# ----------------------------------------------------------------------------- Nyström, Performer

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what the linear-attention kernels take


def _linear_attention_plan(op: str, q, backend: str) -> Plan:
    """The shared rule: no batch or no heads is an empty output answered before any kernel (the
    other dims are checked ≥ 1); the kernels take KERNEL_DTYPES, "reference" any floating dtype in
    its own; a dtype the kernels lack is a TypeError, not a silent fall back. The C++ kernels compute
    in float32 (16-bit inputs converted on the way in); the Triton kernels in the input dtype with
    float32 accumulation (the products that feed exp in ≈ fp32: triton/nystrom.py, performer.py)."""
    backend = select(op, q.device, backend)
    dtype = q.dtype
    empty = q.shape[0] * q.shape[2] == 0
    if backend == "reference":
        return _plan(op, backend, "reference", dtype, empty)
    if not empty and dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: backend {backend!r} supports {KERNEL_DTYPES}, got {dtype}; "
                        "use backend='reference' for other dtypes")
    if backend == "cpu":
        return _plan(op, backend, "dispatcher", torch.float32, empty)
    return _plan(op, backend, _triton_path(q.device), dtype, empty)


def nystrom_plan(q, *, backend: str = "auto") -> Plan:
    """The plan of `nystrom_attention(q, ...)` (the rule: _linear_attention_plan)."""
    return _linear_attention_plan("nystrom_attention", q, backend)


def performer_plan(q, *, backend: str = "auto") -> Plan:
    """The plan of `performer_attention(q, ...)` (the rule: _linear_attention_plan)."""
    return _linear_attention_plan("performer_attention", q, backend)


# ----------------------------------------------------------------------------- the public question

def explain(op: str, *tensors, **options) -> Plan:
    """What would run `op` on these tensors with these options, without running it:
    explain("attention", q, k), explain("linear_act", x, weight, bias, act="hardswish"),
    explain("nystrom_attention", q), explain("performer_attention", q, backend="reference")."""
    plans = {"attention": attention_plan, "linear_act": linear_act_plan, "nystrom_attention": nystrom_plan,
             "performer_attention": performer_plan}
    if op not in plans:
        raise ValueError(f"explain: op must be one of {tuple(plans)}, got {op!r}")
    return plans[op](*tensors, **options)


__all__ = ["DENSE_MAX_ROWS", "dense_takes_rows", "IMAGE_CONV_MAX_CHANNELS", "image_conv_first", "Plan", "attention_plan", "attention_path", "linear_act_plan", "linear_act_path", "nystrom_plan",
           "performer_plan", "explain",
           "attention_empty", "compute_dtype", "cpu_inference", "gemm_engine", "ONEDNN_MIN_FLOPS",
           "KERNEL_DTYPES", "TRITON_ACTIVATIONS", "TRITON_DTYPES"]
