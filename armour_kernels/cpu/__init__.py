"""The CPU backend: launchers over the C++ extension armour_kernels._C (scalar / AVX2 / AVX-512 / AMX kernels),
one file per kernel family (docs/backends.md).

One build runs on any x86-64: the kernels are compiled for each ISA (scalar, avx2, avx512,
avx512bf16 = avx512 plus the bf16 pair engine in bf16 attention) and the best one the CPU supports
is chosen at run time, from CPUID (not the build machine's flags). The attention products run on
the hand-written micro-kernels of that ISA or on oneDNN's brgemm micro-kernels through torch
(ATen's cpublas; torch >= 2.6): a dispatch path is named

    "avx512"           hand-written AVX-512 only,
    "avx512+brgemm"    the fp32 products on oneDNN's brgemm (any ISA from avx2),
    "amx"              avx512bf16 with the bf16 products on AMX tiles too (Sapphire Rapids and later).

The default is the fastest the CPU and torch build support (amx, else <best>+brgemm). `use_isa(name)`
(or the environment variable ARMOUR_KERNELS_CPU_ISA, read at import) forces one, e.g. to test every
path on one machine or to run without brgemm / AMX; `supported_isas()` lists them.
"""
from __future__ import annotations

import contextlib
import os

import torch

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


# Ops whose CPU kernel the extension registers with PyTorch's dispatcher (no Python binding), asked
# once here: select() asks on every call, torch.compile traces it.
_DISPATCHER_OPS = {"attention": "armour_kernels::attention", "linear_act": "armour_kernels::linear_hardswish",
                   "dense": "armour_kernels::dense", "dense_mlp": "armour_kernels::dense_mlp",
                   "patch_rows": "armour_kernels::patch_rows", "image_conv": "armour_kernels::image_conv",
                   "nystrom_attention": "armour_kernels::nystrom_fwd",
                   "performer_attention": "armour_kernels::performer_fwd"}
_DISPATCHED = frozenset(name for name, op in _DISPATCHER_OPS.items()
                        if _C is not None and torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"))


def has_op(name: str) -> bool:
    """True when the extension is built and implements op `name`: a CPU kernel of a dispatcher op
    (csrc/torch_ops/, asked once at import) or a function of the module."""
    if name in _DISPATCHER_OPS:
        return name in _DISPATCHED
    return _C is not None and hasattr(_C, name)


def _require():
    """The extension module, or a RuntimeError that says how to build it."""
    if _C is None:
        raise RuntimeError("armour_kernels._C is not built (`pip install --no-build-isolation .` or "
                           f"`python setup.py build_ext --inplace`): {_IMPORT_ERROR}")
    return _C


def isa() -> str | None:
    """The dispatch path the CPU kernels run with now ("avx2", "avx512+brgemm", "amx", ...); None when not built."""
    return _C.isa() if _C is not None else None


def best_isa() -> str | None:
    """The dispatch path that runs unless forced (e.g. "amx", "avx512+brgemm"); None when not built."""
    return _C.best_isa() if _C is not None else None


def supported_isas() -> list[str]:
    """The dispatch paths this CPU (and torch build) can run, slowest first (empty when not built)."""
    return list(_C.supported_isas()) if _C is not None else []


def set_isa(name: str) -> None:
    """Select the dispatch path for the whole process (RuntimeError if the CPU lacks it)."""
    _require().set_isa(name)


@contextlib.contextmanager
def _setting(get, set_, value):
    """A process-wide setting of the extension at `value` inside the block, restored after it."""
    previous = get()
    set_(value)
    try:
        yield
    finally:
        set_(previous)


def use_isa(name: str):
    """Run the CPU kernels with dispatch path `name` inside the block, then restore the previous one."""
    ext = _require()
    return _setting(ext.isa, ext.set_isa, name)


# The dense layers' task kernels of our own (docs/dense.md): "amx", bf16 on AMX tiles (17–32-row
# blocks); "f32", fp32 on AVX-512 for layers of at most 64 rows, on AVX2 for all. Off, the layer runs
# oneDNN's brgemm micro-kernel per tile followed by the epilogue.
DENSE_TASKS = ("amx", "f32")


def _dense_task(kind: str) -> str:
    if kind not in DENSE_TASKS:
        raise ValueError(f"unknown dense task kernel {kind!r}; choose from {DENSE_TASKS}")
    return f"dense_{kind}"


def dense_task_available(kind: str) -> bool:
    """Whether the dense task kernel `kind` ("amx" or "f32") runs here: compiled, and the CPU and the
    current dispatch use it ("amx": an AMX CPU on the "amx" dispatch; "f32": an AVX2 or AVX-512
    dispatch with brgemm)."""
    name = _dense_task(kind)
    return _C is not None and hasattr(_C, f"{name}_available") and getattr(_C, f"{name}_available")()


def use_dense_task(kind: str, enabled: bool):
    """Inside the block the dense task kernel `kind` ("amx" or "f32") runs where it applies (True, the
    default) or its layers run oneDNN's brgemm micro-kernel per tile followed by the epilogue (False);
    tests and A/B benchmarks use both."""
    name = _dense_task(kind)
    ext = _require()
    return _setting(getattr(ext, f"{name}_enabled"), getattr(ext, f"set_{name}"), enabled)


if _C is not None and os.environ.get(ISA_ENV):
    _C.set_isa(os.environ[ISA_ENV])

__all__ = ["built", "import_error", "has_op", "isa", "best_isa", "supported_isas", "set_isa", "use_isa",
           "DENSE_TASKS", "dense_task_available", "use_dense_task"]
