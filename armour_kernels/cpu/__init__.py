"""Host side of the C++ extension armour_kernels._C (CPU kernels: scalar / AVX2 / AVX-512).

One build runs on any x86-64: the kernels are compiled for each ISA (scalar, avx2, avx512,
avx512bf16 = avx512 plus bf16 dot products in the bf16 attention forward) and the best one the
CPU supports is chosen at run time. `use_isa("avx2")` (or the environment variable
ARMOUR_KERNELS_CPU_ISA=scalar|avx2|avx512|avx512bf16, read at import) forces one, e.g. to test
every path on one AVX-512 machine.
"""
from __future__ import annotations

import contextlib
import os

try:
    from .. import _C
except ImportError:  # not built: every CPU op reports itself missing, with a clear error upstream
    _C = None

ISA_ENV = "ARMOUR_KERNELS_CPU_ISA"


def has_op(name: str) -> bool:
    return _C is not None and hasattr(_C, name)


def _require():
    if _C is None:
        raise RuntimeError("armour_kernels._C is not built (`pip install --no-build-isolation -e .` or "
                           "`python setup.py build_ext --inplace`)")
    return _C


def isa() -> str | None:
    """The ISA the CPU kernels run with now ("scalar", "avx2", "avx512", "avx512bf16"); None when not built."""
    return _C.isa() if _C is not None else None


def supported_isas() -> list[str]:
    """The ISAs this CPU can run, slowest first (empty when the extension is not built)."""
    return list(_C.supported_isas()) if _C is not None else []


def set_isa(name: str) -> None:
    """Select the kernel ISA for the whole process (RuntimeError if the CPU lacks it)."""
    _require().set_isa(name)


@contextlib.contextmanager
def use_isa(name: str):
    """Run the CPU kernels with ISA `name` inside the block, then restore the previous one."""
    previous = _require().isa()
    _C.set_isa(name)
    try:
        yield
    finally:
        _C.set_isa(previous)


if _C is not None and os.environ.get(ISA_ENV):
    _C.set_isa(os.environ[ISA_ENV])
