"""What the autotuned Triton launchers share: how many configs a key benchmarks, and forcing one.

Compile budget: on a cold cache the autotuner compiles and times every config its early prune
keeps, once per key. The launchers keep at most SHORTLIST per key (the first that fit, in their
own order of preference), so a first call costs a few compiles per kernel, not a dozen
(bench/results/offline-sm90/ gives the compile seconds per config). ARMOUR_TRITON_AUTOTUNE=full
benchmarks every config that fits instead.

Forcing: `ForcedConfigs.use(name=config)` makes the named kernel launch with that triton.Config,
bypassing the autotuner, on a GPU and in the interpreter alike: how every config of a list is
checked for correctness (tests/triton/test_every_config.py, bench/gpu_sweep.py), not only the
one the autotuner happens to pick.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

SHORTLIST = 3


def shortlist(configs: list) -> list:
    """The configs the autotuner benchmarks, from those that fit (in order of preference)."""
    if os.environ.get("ARMOUR_TRITON_AUTOTUNE", "") == "full":
        return configs
    return configs[:SHORTLIST]


class ForcedConfigs:
    """kernel name → the triton.Config its launches use while forced."""

    def __init__(self, names):
        self.names = tuple(names)
        self._forced: dict = {}

    def get(self, name):
        return self._forced.get(name)

    @contextmanager
    def use(self, **configs):
        unknown = set(configs) - set(self.names)
        if unknown:
            raise ValueError(f"unknown kernels {sorted(unknown)}; expected some of {list(self.names)}")
        saved = dict(self._forced)
        self._forced.update(configs)
        try:
            yield
        finally:
            self._forced.clear()
            self._forced.update(saved)
