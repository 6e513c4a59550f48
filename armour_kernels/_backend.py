"""Which implementation runs an op: one rule for every kernel family.

`auto`: CUDA tensors → Triton; CPU tensors → the C++ extension when it has the op, else a
clear error (never a silent slow path). `triton` on CPU tensors is allowed only under
TRITON_INTERPRET=1 (how CI checks the Triton kernels). `reference` runs python_ref.
"""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "cpu", "reference")


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cpu_has_op(name: str) -> bool:
    """True when the compiled extension (armour_kernels._C) provides the CPU kernel `name`."""
    try:
        from . import cpu
    except ImportError:
        return False
    return cpu.has_op(name)


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """Turn the user's `backend` argument into the one that runs `op` on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return backend
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "cpu"
    if backend == "triton":
        if device.type != "cuda" and not triton_interpreting():
            raise RuntimeError(
                f"armour_kernels.{op}: backend='triton' needs CUDA tensors (got {device.type}); "
                "set TRITON_INTERPRET=1 to run the Triton kernels on CPU tensors in the interpreter")
        return backend
    if device.type != "cpu":
        raise RuntimeError(f"armour_kernels.{op}: backend='cpu' needs CPU tensors, got {device.type}")
    if not cpu_has_op(op):
        raise RuntimeError(
            f"armour_kernels.{op}: no CPU kernel for this op in the C++ extension armour_kernels._C "
            "(is the package built? `pip install --no-build-isolation -e .`); "
            "pass backend='reference' to run the pure-PyTorch reference instead")
    return backend
