"""Timing helper of the CPU benchmark scripts (bench/cpu_*.py)."""
from __future__ import annotations

import time


def best_ms(fn, rounds, inner=5):
    """Minimum over `rounds` of the mean time of `inner` calls, in ms: on a shared machine the
    minimum is the least disturbed estimate."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best * 1e3
