"""Shared test helpers: tolerances per dtype, comparisons, NaN-filled buffers, which backends and
dtypes this machine runs. Imported as `from helpers import ...` by the tests of every folder
(tests/conftest.py puts tests/ on sys.path).

A kernel test is written once and parametrised over the backend with `backend_params` (or over
backend and dtype with `backend_dtype_params`); a combination this machine cannot run is skipped
with its reason: the C++ extension not built, triton not installed, bf16 in the Triton interpreter,
half precision in a python_ref function that computes in its input dtype.
"""
import os
from pathlib import Path

import pytest
import torch

# The repository root, for tests that read its files or start a Python with it on PYTHONPATH.
ROOT = Path(__file__).resolve().parents[1]

HAS_CUDA = torch.cuda.is_available()
# Interpreter bf16 dot products are garbage (docs/backends.md): bf16 Triton tests need a GPU.
TRITON_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])

# (atol, rtol) against a float64 reference, per input dtype: the project's one table (docs/numerics.md).
from armour_kernels.tolerances import TOLERANCES, tolerance  # noqa: E402,F401

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# The kernel backends, in the order the parametrised test ids list them.
KERNEL_BACKENDS = ("triton", "cpu", "reference")

# The dtypes each backend computes in. The CPU kernels take float16 and compute it in float32
# (float64 too for the ops in CPU_FLOAT64_OPS); the Triton kernels take float16 / float32 in the
# interpreter and bfloat16 too on a GPU.
BACKEND_DTYPES = {
    "triton": tuple(TRITON_DTYPES),
    "cpu": (torch.float32, torch.bfloat16, torch.float16),
    "reference": (torch.float32, torch.bfloat16, torch.float16, torch.float64),
}
CPU_FLOAT64_OPS = ("attention", "linear_hardswish")
# python_ref's Performer computes in its input dtype, as performer-pytorch does (the other references
# accumulate half precision in float32), so its fp16 / bf16 results are outside those dtypes' tolerances.
REFERENCE_IN_INPUT_DTYPE_OPS = ("performer_attention",)


def assert_close(actual, expected, dtype=None, scale=1.0, msg=""):
    """Compare with the per-dtype tolerance, scaled by the reference's magnitude."""
    dtype = dtype or actual.dtype
    atol, rtol = TOLERANCES[dtype]
    expected = expected.to(torch.float64)
    actual = actual.to(torch.float64)
    mag = max(expected.abs().max().item(), 1.0)
    assert not torch.isnan(actual).any(), f"{msg}: NaN in result (an element was never written?)"
    torch.testing.assert_close(actual, expected, atol=atol * mag * scale, rtol=rtol * scale, msg=msg or None)


def assert_same_nans_and_close(actual, expected, dtype, msg, scale=1.0):
    """NaN exactly where `expected` (a float64 reference) has NaN, ±inf where it has them, every other
    element within the dtype's tolerance scaled by the largest finite |expected|: the NaN-in, NaN-out
    tests (docs/numerics.md)."""
    actual, expected = actual.detach().cpu().double(), expected.detach().double()
    nan_got, nan_want = actual.isnan(), expected.isnan()
    assert torch.equal(nan_got, nan_want), (
        f"{msg}: NaN at {nan_got.nonzero().tolist()[:6]}..., expected at {nan_want.nonzero().tolist()[:6]}... "
        f"({int(nan_got.sum())} vs {int(nan_want.sum())} elements)")
    atol, rtol = TOLERANCES[dtype]
    finite = expected[expected.isfinite()]
    mag = max(finite.abs().max().item(), 1.0) if finite.numel() else 1.0
    torch.testing.assert_close(actual, expected, atol=atol * mag * scale, rtol=rtol * scale, equal_nan=True,
                               msg=lambda m: f"{msg}: {m}")


def assert_bad_argument(fn, args, change, error, match):
    """fn(q, k, v, **rest) on `args` updated by `change` raises `error` with a message matching `match`."""
    args = {**args, **change}
    with pytest.raises(error, match=match):
        fn(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def assert_no_cpu_kernel_error(op, call):
    """Without the C++ op `op`, call() (backend "auto" on CPU tensors) is a clear error, not a slow path."""
    from armour_kernels.backend import cpu_has_op
    if cpu_has_op(op):
        pytest.skip(f"the C++ extension provides {op}")
    with pytest.raises(RuntimeError, match="no CPU kernel"):
        call()


def results_on_threads(counts, fn):
    """[fn() with torch.set_num_threads(n)] for each n in counts; the caller's thread count restored."""
    before = torch.get_num_threads()
    try:
        outs = []
        for n in counts:
            torch.set_num_threads(n)
            outs.append(fn())
        return outs
    finally:
        torch.set_num_threads(before)


def nan_like(t):
    """An output buffer pre-filled with NaN, so an unwritten element fails the comparison."""
    return torch.full_like(t, float("nan"))


# ----------------------------------------------------------------------------- backends and dtypes

def backend_skip_reason(backend, op="attention"):
    """Why `backend` cannot run `op` here, or None when it can."""
    if backend == "reference":
        return None
    if backend == "cpu":
        from armour_kernels.backend import cpu_has_op
        return None if cpu_has_op(op) else f"the C++ extension armour_kernels._C has no {op} here (not built?)"
    if backend == "triton":
        from armour_kernels import backends
        status = backends()["triton"]
        return None if status["available"] else status["reason"]
    raise ValueError(backend)


def dtype_skip_reason(backend, dtype, op="attention"):
    """Why `backend` does not compute `op` in `dtype` here, or None when it does."""
    if backend == "reference" and op in REFERENCE_IN_INPUT_DTYPE_OPS and dtype in (torch.float16, torch.bfloat16):
        return f"python_ref computes {op} in {dtype_name(dtype)} itself: not within that dtype's tolerance"
    if dtype in BACKEND_DTYPES[backend] or (backend, dtype) == ("cpu", torch.float64) and op in CPU_FLOAT64_OPS:
        return None
    if backend == "triton" and dtype == torch.bfloat16:
        return "bf16 dot products are wrong in the Triton interpreter (docs/backends.md): needs a GPU"
    return f"the {backend} backend does not compute {op} in {dtype_name(dtype)}"


def backend_params(backends=KERNEL_BACKENDS, op="attention"):
    """pytest.param per backend, skipped (with the reason) where this machine cannot run it."""
    params = []
    for backend in backends:
        reason = backend_skip_reason(backend, op)
        params.append(pytest.param(backend, id=backend, marks=[pytest.mark.skip(reason=reason)] if reason else []))
    return params


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def backend_dtype_params(dtypes, backends=KERNEL_BACKENDS, op="attention"):
    """pytest.param per (backend, dtype), skipped (with the reason) where this machine cannot run it."""
    params = []
    for backend in backends:
        for dtype in dtypes:
            reason = backend_skip_reason(backend, op) or dtype_skip_reason(backend, dtype, op)
            params.append(pytest.param(backend, dtype, id=f"{backend}-{dtype_name(dtype)}",
                                       marks=[pytest.mark.skip(reason=reason)] if reason else []))
    return params


def device_for(backend):
    """Where a backend's inputs live: CUDA for Triton when there is a GPU, else the CPU."""
    return torch.device("cuda" if backend == "triton" and HAS_CUDA else "cpu")


# ----------------------------------------------------------------------------- Triton launches

def record_launches(monkeypatch):
    """Record (kernel name, named arguments) of every Triton launch, still running it."""
    from triton.runtime.jit import KernelInterface
    seen = []
    original = KernelInterface.__getitem__

    def getitem(self, grid):
        launch = original(self, grid)

        def recorded(*args, **kwargs):
            seen.append((getattr(self, "fn", self).__name__, dict(zip(self.arg_names, args), **kwargs)))
            return launch(*args, **kwargs)
        return recorded
    monkeypatch.setattr(KernelInterface, "__getitem__", getitem)
    return seen


# ----------------------------------------------------------------------------- subprocesses

def run_compiled_script(script: str, timeout: int):
    """Run `script` in a fresh Python without TRITON_INTERPRET, so Triton really compiles.

    The launch-limit tests (tests/triton/) compile kernels this way without a GPU; the script
    prints "compiled" when it got through.
    """
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]
