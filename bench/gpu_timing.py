"""Timing for the GPU validation (bench/gpu_sweep.py): kernel-only and wall time of one call.

Kernel-only time is what the GPU spends in kernels per call (torch.profiler's device time,
summed over every kernel the call launches, forward and backward); wall time is the eager call
as a training loop sees it (CUDA events, host overhead and launch gaps included). The two differ
by the host side of the call: the launcher's Python, the autograd op, the allocator. Without a
GPU (the script's --dry-run) only a wall time is taken, with the host clock.
"""
from __future__ import annotations

import statistics
import time

import torch


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def wall_ms(fn, reps: int, warmup: int = 2) -> float:
    """Median wall time of fn() in ms over `reps` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def kernel_ms(fn, reps: int) -> tuple[float | None, list[str]]:
    """(device time of fn()'s kernels in ms per call, the names of its three longest kernels);
    (None, []) without a GPU. fn must be warm (compiled, autotuned) before."""
    if not torch.cuda.is_available():
        return None, []
    from torch.profiler import ProfilerActivity, profile
    _sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        _sync()
    events = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    total_us = sum(e.self_device_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:3]
    return total_us / reps / 1e3, [e.key[:80] for e in top]


def first_call_ms(fn) -> float:
    """Wall time of the first call (compile and autotune included when the caches are cold)."""
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return (time.perf_counter() - start) * 1e3


def sdpa_backend(kernel_names: list[str]) -> str:
    """Which SDPA backend ran, from its kernel names."""
    names = " ".join(kernel_names).lower()
    for marker, backend in (("flash", "flash"), ("cudnn", "cudnn"), ("fmha", "efficient"),
                            ("efficient", "efficient"), ("cutlass", "efficient")):
        if marker in names:
            return backend
    return "math" if names else "unknown"


def measure(fn, reps: int) -> dict:
    """first-call, wall and kernel-only ms of fn, and its longest kernels."""
    first = first_call_ms(fn)
    wall = wall_ms(fn, reps)
    try:
        kernels, names = kernel_ms(fn, reps)
    except Exception as error:  # the profiler's fault, not the call's: keep the wall time
        kernels, names = None, [f"profiler: {type(error).__name__}: {str(error)[:200]}"]
    return dict(first_call_ms=round(first, 3), wall_ms=round(wall, 4),
                kernel_ms=None if kernels is None else round(kernels, 4), kernels=names)
