"""The CPU backend: launchers over the C++ extension armour_kernels._C, one file per kernel family.

One build runs on any x86-64: the kernels are compiled for each ISA (scalar, avx2, avx512,
avx512bf16) and the best one the CPU supports is chosen at run time by CPUID
(docs/backends.md). `use_isa("avx2")` — a context manager — or the environment variable
ARMOUR_KERNELS_CPU_ISA=scalar|avx2|avx512|avx512bf16 (read at import) forces one, e.g. to test
every path on one AVX-512 machine.
"""
from __future__ import annotations

import contextlib
import os

try:
    from .. import _C
    _IMPORT_ERROR = None
except ImportError as error:  # not built: every CPU op reports itself missing, with a clear error upstream
    _C = None
    _IMPORT_ERROR = str(error)

ISA_ENV = "ARMOUR_KERNELS_CPU_ISA"


def built() -> bool:
    """True when the C++ extension is built and importable."""
    return _C is not None


def import_error() -> str | None:
    """Why the extension did not import (None when it did)."""
    return _IMPORT_ERROR


# Op name (as the backend policy asks) → the extension function that implements it, where they differ.
_SYMBOLS = {"linear_act": "linear_hardswish"}


def has_op(name: str) -> bool:
    """True when the extension is built and implements op `name`."""
    return _C is not None and hasattr(_C, _SYMBOLS.get(name, name))


def _require():
    """The extension module, or a RuntimeError that says how to build it."""
    if _C is None:
        raise RuntimeError("armour_kernels._C is not built (`pip install --no-build-isolation .` or "
                           f"`python setup.py build_ext --inplace`): {_IMPORT_ERROR}")
    return _C


def isa() -> str | None:
    """The ISA the CPU kernels run with now ("scalar", "avx2", "avx512", "avx512bf16"); None when not built."""
    return _C.isa() if _C is not None else None


def best_isa() -> str | None:
    """The best ISA this CPU supports (what runs unless forced); None when not built."""
    return _C.best_isa() if _C is not None else None


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

__all__ = ["built", "import_error", "has_op", "isa", "best_isa", "supported_isas", "set_isa", "use_isa"]
