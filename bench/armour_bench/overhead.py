"""Where the time of one small call goes: torch.profiler's per-op breakdown, in µs per call.

At batch 1 a model's GEMMs are small, so what surrounds them — Python module code, argument
checks, dtype casts, allocations, one dispatch per small op — is a large share of the call.
`breakdown(fn, calls)` profiles `calls` calls of `fn` and returns every op's self time and call
count per call, and how much of the call the heavy kernels take (`KERNEL_OPS`: the GEMMs,
convolutions and attention kernels, each op's self time, i.e. without its child ops). The rest
of a call's wall time is spent outside those kernels: Python, dispatch, checks, small ops,
allocations — and, in a torch.compile'd model, inductor's own generated kernels, which the
profiler does not show as separate ops (they are inside "Call CompiledFxGraph").

`per_call()` measures the cost of one tiny call against PyTorch's own (the per-call overhead
goals: attention without and with a gradient against scaled_dot_product_attention, Linear +
Hardswish against F.linear + F.hardswish): medians over rounds, the two sides interleaved.
"""
from __future__ import annotations

import os

import torch

# Ops whose self time is the arithmetic of a layer (GEMM, convolution, attention).
KERNEL_OPS = ("mkl::_mkl_linear", "mkldnn::_linear_pointwise", "mkldnn::_convolution_pointwise", "aten::addmm",
              "aten::mm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution", "aten::_mkldnn_linear",
              "aten::_scaled_dot_product_flash_attention_for_cpu", "armour_kernels::attention",
              "armour_kernels::attention_backward", "armour_kernels::linear_hardswish", "armour_kernels::dense",
              "armour_kernels::dense_mlp", "armour_kernels::image_conv",
              "aten::_softmax")


def breakdown(fn, calls: int = 20, warmup: int = 3, top: int = 20) -> dict:
    """{"ops": [{op, calls, self_us, total_us} per call, largest self time first, `top` of them],
    "kernel_us": µs per call inside KERNEL_OPS, "profiled_us": µs per call of all ops' self time,
    "wall_us": the median µs of `calls` calls back to back without the profiler, the same warm caches
    the profiled calls see (so wall_us − kernel_us is the time outside the kernels)}."""
    import statistics
    import time

    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        # Kineto (the profiler's library) asks the CUDA driver for its devices when it starts, even for
        # CPU-only profiling; without a GPU that fails by design and it prints "ERROR ...
        # gpuGetDeviceCount failed with code 35". Its log level above ERROR (5) keeps that out of a
        # CPU run; read when kineto starts, so it must be set before the first profile.
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    walls = []
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - start)
        # acc_events=True: one profiling cycle here, so keeping events across cycles changes nothing;
        # without it torch 2.11 warns at every start that events are cleared between cycles.
        with profile(activities=[ProfilerActivity.CPU], acc_events=True) as prof:
            for _ in range(calls):
                fn()
    events = [e for e in prof.key_averages() if e.key != "ProfilerStep*"]
    ops = sorted(({"op": e.key, "calls": e.count / calls, "self_us": e.self_cpu_time_total / calls,
                   "total_us": e.cpu_time_total / calls} for e in events), key=lambda o: -o["self_us"])
    return {"ops": ops[:top], "kernel_us": sum(o["self_us"] for o in ops if o["op"] in KERNEL_OPS),
            "profiled_us": sum(o["self_us"] for o in ops), "wall_us": statistics.median(walls) * 1e6}


def table(ops: list, wall_us: float | None = None) -> list[str]:
    """Markdown rows of a breakdown's ops (µs per model call)."""
    lines = ["| op | calls per model call | self µs | total µs | share |", "|---|---:|---:|---:|---:|"]
    whole = wall_us or sum(o["self_us"] for o in ops) or 1.0
    for o in ops:
        lines.append(f"| `{o['op']}` | {o['calls']:.0f} | {o['self_us']:.1f} | {o['total_us']:.1f} | "
                     f"{100 * o['self_us'] / whole:.1f}% |")
    return lines


def _interleaved(ours, theirs, rounds: int, calls: int) -> tuple[float, float]:
    """Median µs per call of each side; rounds of `calls` calls, alternating sides (drift hits both)."""
    import statistics
    import time

    times = ([], [])
    for fn in (ours, theirs):
        for _ in range(calls):
            fn()
    for _ in range(rounds):
        for side, fn in enumerate((ours, theirs)):
            start = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            times[side].append((time.perf_counter_ns() - start) / calls / 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


# (case, goal: ours / PyTorch's at most)
GOALS = {"attention, no grad": 1.3, "attention forward, with grad": 2.0, "attention forward + backward": 2.0,
         "linear_act hardswish, no grad": 1.3}


def per_call(rounds: int = 40, calls: int = 50, threads: int = 1) -> list[dict]:
    """One tiny call each (attention B=1 N=16 H=1 D=16, Armour's value=q; Linear 16 tokens 64 -> 64):
    [{case, ours_us, torch_us, ratio, goal}]."""
    import torch.nn.functional as F

    from armour_kernels.ops.attention import armour_attention
    from armour_kernels.ops.linear_act import linear_act

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        q, k = (torch.randn(1, 16, 1, 16, generator=gen) for _ in range(2))
        qt, kt = q.transpose(1, 2), k.transpose(1, 2)  # SDPA's (B, H, N, D) view of the same data
        qg, qtg = q.clone().requires_grad_(), qt.clone().requires_grad_()
        dout = torch.randn(1, 16, 1, 16, generator=gen)
        x, w, b = torch.randn(16, 64, generator=gen), torch.randn(64, 64, generator=gen), torch.randn(64, generator=gen)

        def fwd_bwd(fn, leaf, grad):
            return lambda: torch.autograd.grad(fn(), leaf, grad)

        cases = {
            "attention, no grad": (lambda: armour_attention(q, k), lambda: F.scaled_dot_product_attention(qt, kt, qt)),
            "attention forward, with grad": (lambda: armour_attention(qg, k),
                                             lambda: F.scaled_dot_product_attention(qtg, kt, qtg)),
            "attention forward + backward": (fwd_bwd(lambda: armour_attention(qg, k), qg, dout),
                                             fwd_bwd(lambda: F.scaled_dot_product_attention(qtg, kt, qtg), qtg,
                                                     dout.transpose(1, 2))),
            "linear_act hardswish, no grad": (lambda: linear_act(x, w, b, act="hardswish"),
                                              lambda: F.hardswish(F.linear(x, w, b))),
        }
        rows = []
        for case, (ours, theirs) in cases.items():
            grad = "grad" in case and "no grad" not in case or "backward" in case
            with torch.set_grad_enabled(grad):
                ours_us, torch_us = _interleaved(ours, theirs, rounds, calls)
            rows.append({"case": case, "ours_us": ours_us, "torch_us": torch_us, "ratio": ours_us / torch_us,
                         "goal": GOALS[case]})
        return rows
    finally:
        torch.set_num_threads(previous)


def per_call_table(rows: list[dict]) -> list[str]:
    lines = ["| call | ours µs | PyTorch µs | ratio | goal | met |", "|---|---:|---:|---:|---:|:-:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['ours_us']:.1f} | {r['torch_us']:.1f} | {r['ratio']:.2f}x | "
                     f"≤ {r['goal']}x | {'yes' if r['ratio'] <= r['goal'] else 'no'} |")
    return lines


__all__ = ["breakdown", "table", "per_call", "per_call_table", "KERNEL_OPS", "GOALS"]


def write_per_call(folder: str, rows: list[dict]) -> None:
    """overhead-cpu.json and overhead-cpu.md in `folder` (a bench/results/<cpu>/ folder)."""
    import json
    import os
    import platform

    import armour_kernels.cpu as cpu

    meta = {"torch": torch.__version__, "isa": cpu.isa(), "threads": 1, "machine": platform.processor() or platform.machine()}
    with open(os.path.join(folder, "overhead-cpu.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = ["# Per-call overhead on CPU: one tiny call against PyTorch's own", "",
             "Attention B=1 N=16 H=1 D=16 (`armour_attention`, value=q) against `F.scaled_dot_product_attention`;",
             "`linear_act(act=\"hardswish\")` on 16 tokens 64 -> 64 against `F.hardswish(F.linear(...))`. 1 thread,",
             "medians of per-round means, the two sides interleaved round by round. Command:",
             "`python -m armour_bench.overhead <folder>`.", "",
             f"torch {meta['torch']}, CPU kernels {meta['isa']}.", "", *per_call_table(rows), ""]
    with open(os.path.join(folder, "overhead-cpu.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    import sys

    results = per_call()
    print("\n".join(per_call_table(results)))
    if len(sys.argv) > 1:
        write_per_call(sys.argv[1], results)
