"""The one timing helper of the benchmarks: median wall time of a call, GPU-synchronised.

`median_ms(fn, device, repeats, warmup=2)`: runs `fn` `warmup` times untimed (compilation,
autotuning, caches), then `repeats` times, and returns the median in milliseconds. On CUDA each
call is timed with CUDA events (device time, no host-side gaps); elsewhere with perf_counter.
`device` is a torch.device or its type string ("cuda", "cpu", "cuda:1").
"""
from __future__ import annotations

import statistics
import time

import torch


def device_type(device) -> str:
    return device.type if isinstance(device, torch.device) else str(device).split(":")[0]


def synchronize(device) -> None:
    if device_type(device) == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device, repeats: int, warmup: int = 2) -> float:
    cuda = device_type(device) == "cuda"
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(max(1, repeats)):
        if cuda:
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


__all__ = ["median_ms", "synchronize", "device_type"]
