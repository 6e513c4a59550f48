"""The one timing helper of the benchmarks: median wall time of calls, GPU-synchronised.

- `median_ms(fn, device, repeats, warmup=2)`: runs `fn` `warmup` times untimed (compilation,
  autotuning, caches), then `repeats` times, and returns the median in milliseconds. On CUDA each
  call is timed with CUDA events (device time, no host-side gaps); elsewhere with perf_counter.
- `interleaved_ms(fns, device, repeats, warmup=2)`: the same for a dict of calls, timed in turn
  call by call ({name: median ms}). Interleaving spreads any drift of the machine's load (a shared
  CPU, GPU clocks) evenly over the implementations being compared, instead of favouring whichever
  ran in a quiet moment; every comparison table of the benchmarks is timed this way.
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


def _timed_ms(fn, cuda: bool) -> float:
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def interleaved_ms(fns: dict, device, repeats: int, warmup: int = 2) -> dict:
    cuda = device_type(device) == "cuda"
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            times[name].append(_timed_ms(fn, cuda))
    return {name: statistics.median(t) for name, t in times.items()}


def median_ms(fn, device, repeats: int, warmup: int = 2) -> float:
    return interleaved_ms({"fn": fn}, device, repeats, warmup)["fn"]


__all__ = ["median_ms", "interleaved_ms", "synchronize", "device_type"]
