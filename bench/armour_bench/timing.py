"""The one timing helper of the benchmarks: interleaved rounds, repetitions by time budget, spreads.

- `interleaved(fns, device, budget_s=...)`: times a dict of calls {name: fn} in rounds; each
  round calls every fn once (the order rotates from round to round), so a drift of the
  machine's load (a shared CPU, GPU clocks) falls on every implementation alike instead of
  favouring whichever ran in a quiet moment. Each fn is warmed up first (compilation,
  autotuning, caches), then rounds run until `budget_s` is spent (at least `min_rounds`, at
  most `max_rounds`). Returns {name: Timing} with every sample kept.
- `Timing`: the samples of one fn (ms); `median`, quartiles (`q1`, `q3`: the IQR), `min`, `max`.
- `ratio(fast, slow)`: how many times faster `fast` is than `slow` with its spread, from the
  per-round ratios (the two calls of a round ran under the same load); `clear` is False when
  the spread (IQR of the per-round ratios) contains 1.0: "no clear difference".
- `rounds_for(budget_s, round_s, ...)`: the number of rounds a budget buys.
- `interleaved_ms(fns, device, repeats, warmup)` / `median_ms(fn, ...)`: medians only, a fixed
  number of rounds (the older interface, kept for the kernel benchmarks).
On CUDA each call is timed with CUDA events (device time, no host-side gaps); elsewhere with
perf_counter. `device` is a torch.device or its type string ("cuda", "cpu", "cuda:1").
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import torch

MIN_ROUNDS = 5  # fewer samples give no usable quartiles
MAX_ROUNDS = 2000


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


def quantile(sorted_values: list, p: float) -> float:
    """The p-quantile (0..1) of sorted values, linearly interpolated (numpy's default)."""
    if not sorted_values:
        return math.nan
    position = p * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


@dataclass
class Timing:
    """The samples (ms per call) of one implementation and their summary."""
    samples: list = field(default_factory=list)

    def _sorted(self):
        return sorted(self.samples)

    @property
    def median(self) -> float:
        return quantile(self._sorted(), 0.5)

    @property
    def q1(self) -> float:
        return quantile(self._sorted(), 0.25)

    @property
    def q3(self) -> float:
        return quantile(self._sorted(), 0.75)

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else math.nan

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else math.nan

    def summary(self) -> dict:
        """ms per call: median, q1, q3, min, max, n (what goes into the JSON reports)."""
        return {"median_ms": self.median, "q1_ms": self.q1, "q3_ms": self.q3, "min_ms": self.min,
                "max_ms": self.max, "n": len(self.samples)}

    def per_second(self, items: int) -> dict:
        """items / s at the median, and at the quartiles (q3 time → low rate)."""
        return {"per_s": items / self.median * 1e3, "per_s_low": items / self.q3 * 1e3,
                "per_s_high": items / self.q1 * 1e3}


@dataclass
class Ratio:
    """How many times faster one implementation is than another: median and IQR of per-round ratios."""
    median: float
    low: float
    high: float

    @property
    def clear(self) -> bool:
        """False when the spread contains 1.0 (no clear difference either way)."""
        return not (self.low <= 1.0 <= self.high)

    def text(self) -> str:
        if math.isnan(self.median):
            return "-"
        if not self.clear:
            return f"no clear difference ({self.low:.2f}-{self.high:.2f}x)"
        return f"{self.median:.2f}x ({self.low:.2f}-{self.high:.2f})"

    def as_dict(self) -> dict:
        return {"ratio": self.median, "ratio_low": self.low, "ratio_high": self.high, "clear": self.clear}


def ratio(fast: Timing, slow: Timing) -> Ratio:
    """slow / fast per round (> 1: `fast` is faster). Rounds are paired by index when both have the
    same number of samples (timed interleaved); otherwise the quartiles are crossed (wider)."""
    if not fast.samples or not slow.samples:
        return Ratio(math.nan, math.nan, math.nan)
    if len(fast.samples) == len(slow.samples):
        per_round = sorted(s / f for f, s in zip(fast.samples, slow.samples))
        return Ratio(quantile(per_round, 0.5), quantile(per_round, 0.25), quantile(per_round, 0.75))
    return Ratio(slow.median / fast.median, slow.q1 / fast.q3, slow.q3 / fast.q1)


def rounds_for(budget_s: float, round_s: float, min_rounds: int = MIN_ROUNDS, max_rounds: int = MAX_ROUNDS) -> int:
    """Rounds of `round_s` seconds that fit in `budget_s`, within [min_rounds, max_rounds]."""
    if round_s <= 0:
        return max_rounds
    return int(max(min_rounds, min(max_rounds, budget_s / round_s + 1e-9)))


def interleaved(fns: dict, device, *, budget_s: float = 2.0, warmup: int = 2, min_rounds: int = MIN_ROUNDS,
                max_rounds: int = MAX_ROUNDS) -> dict:
    """{name: Timing}: `warmup` untimed calls of each fn, then rounds (every fn once, rotating
    order) for about `budget_s` seconds of timed calls, at least `min_rounds`."""
    cuda = device_type(device) == "cuda"
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    synchronize(device)
    timings = {name: Timing() for name in names}
    start, rounds, planned = time.perf_counter(), 0, min_rounds
    while rounds < planned:
        shift = rounds % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            timings[name].samples.append(_timed_ms(fns[name], cuda))
        rounds += 1
        if rounds == 1:  # the first round sets the plan: as many rounds as the budget buys
            planned = rounds_for(budget_s, time.perf_counter() - start, min_rounds, max_rounds)
    return timings


def interleaved_ms(fns: dict, device, repeats: int, warmup: int = 2) -> dict:
    """{name: median ms} over exactly `repeats` interleaved rounds."""
    repeats = max(1, repeats)
    timings = interleaved(fns, device, budget_s=0.0, warmup=warmup, min_rounds=repeats, max_rounds=repeats)
    return {name: statistics.median(t.samples) for name, t in timings.items()}


def median_ms(fn, device, repeats: int, warmup: int = 2) -> float:
    return interleaved_ms({"fn": fn}, device, repeats, warmup)["fn"]


__all__ = ["interleaved", "Timing", "Ratio", "ratio", "rounds_for", "quantile", "interleaved_ms", "median_ms",
           "synchronize", "device_type"]
