"""Where the time of one small call goes: torch.profiler's per-op breakdown, in µs per call.

At batch 1 a model's GEMMs are small, so what surrounds them — Python module code, argument
checks, dtype casts, allocations, one dispatch per small op — is a large share of the call.
`breakdown(fn, calls)` profiles `calls` calls of `fn` and returns every op's self time and call
count per call, and how much of the call the heavy kernels take (`KERNEL_OPS`: the GEMMs,
convolutions and attention kernels, each op's self time, i.e. without its child ops). The rest
of a call's wall time is spent outside those kernels: Python, dispatch, checks, small ops,
allocations — and, in a torch.compile'd model, inductor's own generated kernels, which the
profiler does not show as separate ops (they are inside "Call CompiledFxGraph").
"""
from __future__ import annotations

import torch

# Ops whose self time is the arithmetic of a layer (GEMM, convolution, attention).
KERNEL_OPS = ("mkl::_mkl_linear", "mkldnn::_linear_pointwise", "mkldnn::_convolution_pointwise", "aten::addmm",
              "aten::mm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution", "aten::_mkldnn_linear",
              "aten::_scaled_dot_product_flash_attention_for_cpu", "armour_kernels::attention_fwd",
              "armour_kernels::attention_infer", "armour_kernels::linear_hardswish", "aten::_softmax")


def breakdown(fn, calls: int = 20, warmup: int = 3, top: int = 20) -> dict:
    """{"ops": [{op, calls, self_us, total_us} per call, largest self time first, `top` of them],
    "kernel_us": µs per call inside KERNEL_OPS, "profiled_us": µs per call of all ops' self time}."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        for _ in range(warmup):
            fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                fn()
    events = [e for e in prof.key_averages() if e.key != "ProfilerStep*"]
    ops = sorted(({"op": e.key, "calls": e.count / calls, "self_us": e.self_cpu_time_total / calls,
                   "total_us": e.cpu_time_total / calls} for e in events), key=lambda o: -o["self_us"])
    return {"ops": ops[:top], "kernel_us": sum(o["self_us"] for o in ops if o["op"] in KERNEL_OPS),
            "profiled_us": sum(o["self_us"] for o in ops)}


def table(ops: list, wall_us: float | None = None) -> list[str]:
    """Markdown rows of a breakdown's ops (µs per model call)."""
    lines = ["| op | calls per model call | self µs | total µs | share |", "|---|---:|---:|---:|---:|"]
    whole = wall_us or sum(o["self_us"] for o in ops) or 1.0
    for o in ops:
        lines.append(f"| `{o['op']}` | {o['calls']:.0f} | {o['self_us']:.1f} | {o['total_us']:.1f} | "
                     f"{100 * o['self_us'] / whole:.1f}% |")
    return lines


__all__ = ["breakdown", "table", "KERNEL_OPS"]
