"""The backend policy: which implementation runs an op, decided here and nowhere else.

Backends:
    "triton"     the Triton kernels: CUDA tensors (or CPU tensors under TRITON_INTERPRET=1, how the
                 kernels are tested without a GPU)
    "cpu"        the C++ extension armour_kernels._C (and, for the dense layers in inference, oneDNN)
    "reference"  python_ref in plain PyTorch: the definition, slow, never chosen on its own

A request comes from one of three places, strongest first: a `backend=` argument other than
"auto" (every op and module takes one); the innermost `use_backend(...)` block; the environment
variable ARMOUR_KERNELS_BACKEND (read at import). With none of them the request is "auto":
CUDA tensors → "triton", CPU tensors → "cpu". A backend that cannot run here is an error that
says what is missing — never a silent fall back to a slow path. docs/backends.md has the rules.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "cpu", "reference")
ENV_VAR = "ARMOUR_KERNELS_BACKEND"

# The use_backend stack: process-wide (like torch.backends flags) and a plain list, so that
# torch.compile traces `select` without a graph break.
_OVERRIDES: list[str] = []


def check(backend) -> str:
    """`backend` itself when it names a backend; TypeError / ValueError otherwise."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, one of {BACKENDS}; got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


_ENV_BACKEND = check(os.environ.get(ENV_VAR) or "auto")
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # once: find_spec does not trace


@contextlib.contextmanager
def use_backend(backend: str):
    """Run every op and module whose own `backend` is "auto" on `backend` inside the block."""
    _OVERRIDES.append(check(backend))
    try:
        yield
    finally:
        _OVERRIDES.pop()


def requested(backend: str = "auto") -> str:
    """The request after the override rules (argument > use_backend > environment > "auto")."""
    if backend != "auto":
        return backend
    if _OVERRIDES:
        return _OVERRIDES[-1]
    return _ENV_BACKEND


def interpreting() -> bool:
    """True when Triton runs its interpreter (TRITON_INTERPRET=1): Triton kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_CPU_OPS: dict[str, bool] = {}  # op -> cpu.has_op(op): the extension's ops never change in a process


def cpu_has_op(op: str) -> bool:
    """True when the compiled extension armour_kernels._C provides the CPU kernel of `op`."""
    found = _CPU_OPS.get(op)
    if found is None:
        from . import cpu
        found = _CPU_OPS[op] = cpu.has_op(op)
    return found


def select(op: str, device: torch.device, backend: str = "auto") -> str:
    """The backend ("triton", "cpu" or "reference") that runs `op` on tensors of `device`."""
    if backend == "auto" and not _OVERRIDES and _ENV_BACKEND == "auto" and device.type == "cpu" and _CPU_OPS.get(op):
        return "cpu"  # the common case in few steps: it is asked on every call of every op
    backend = requested(check(backend))
    if backend == "reference":
        return backend
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "cpu"
    if backend == "triton":
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(
                f"armour_kernels.{op}: backend 'triton' needs CUDA tensors (got {device.type}); "
                "set TRITON_INTERPRET=1 to run the Triton kernels on CPU tensors in the interpreter")
        if not _TRITON_INSTALLED:
            raise RuntimeError(f"armour_kernels.{op}: backend 'triton' needs the triton package (pip install triton)")
        return backend
    if device.type != "cpu":
        raise RuntimeError(f"armour_kernels.{op}: backend 'cpu' needs CPU tensors, got {device.type}")
    if not cpu_has_op(op):
        raise RuntimeError(
            f"armour_kernels.{op}: no CPU kernel for this op in the C++ extension armour_kernels._C "
            "(is the package built? `pip install --no-build-isolation .`); "
            "pass backend='reference' to run the pure-PyTorch reference instead")
    return backend


def wants_grad(*tensors) -> bool:
    """True when autograd will want a gradient through a call on these tensors (None entries skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def backends() -> dict[str, dict]:
    """What this machine can run: {backend: {"available": bool, "reason": str}} for triton, cpu, reference."""
    from . import cpu

    if not _TRITON_INSTALLED:
        triton = (False, "the triton package is not installed")
    elif torch.cuda.is_available():
        triton = (True, f"CUDA device {torch.cuda.get_device_name()}")
    elif interpreting():
        triton = (True, "no CUDA device; TRITON_INTERPRET=1: the interpreter runs CPU tensors (fp32, fp16)")
    else:
        triton = (False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels in the interpreter)")
    if cpu.built():
        isa = cpu.isa()
        cpu_status = (True, f"C++ extension built; kernels: {isa}" + ("" if isa == cpu.best_isa()
                                                                     else f" (forced; best here: {cpu.best_isa()})"))
    else:
        cpu_status = (False, f"the C++ extension armour_kernels._C is not built ({cpu.import_error()})")
    reference = (True, "pure PyTorch (python_ref): always available, slow")
    return {name: {"available": ok, "reason": why}
            for name, (ok, why) in (("triton", triton), ("cpu", cpu_status), ("reference", reference))}


__all__ = ["BACKENDS", "ENV_VAR", "check", "use_backend", "requested", "select", "backends", "interpreting",
           "cpu_has_op", "wants_grad"]
