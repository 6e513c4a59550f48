"""Shared test fixtures: tolerances per dtype, NaN-filled outputs, which backends exist here.

On a machine without CUDA the Triton kernels run in the interpreter on CPU tensors
(docs/backends.md), so TRITON_INTERPRET is set before anything imports triton.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
# Interpreter bf16 dot products are garbage (docs/backends.md): bf16 Triton tests need a GPU.
TRITON_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])

# (atol, rtol) against a float64 reference, per input dtype.
TOLERANCES = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (2e-4, 2e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (6e-2, 6e-2),
}

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def tolerance(dtype):
    return TOLERANCES[dtype]


def assert_close(actual, expected, dtype=None, scale=1.0, msg=""):
    """Compare with the per-dtype tolerance, scaled by the reference's magnitude."""
    dtype = dtype or actual.dtype
    atol, rtol = TOLERANCES[dtype]
    expected = expected.to(torch.float64)
    actual = actual.to(torch.float64)
    mag = max(expected.abs().max().item(), 1.0)
    assert not torch.isnan(actual).any(), f"{msg}: NaN in result (an element was never written?)"
    torch.testing.assert_close(actual, expected, atol=atol * mag * scale, rtol=rtol * scale, msg=msg or None)


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


def nan_like(t):
    """An output buffer pre-filled with NaN, so an unwritten element fails the comparison."""
    return torch.full_like(t, float("nan"))


@pytest.fixture
def device():
    return torch.device("cuda" if HAS_CUDA else "cpu")


def run_compiled_script(script: str, timeout: int):
    """Run `script` in a fresh Python without TRITON_INTERPRET, so Triton really compiles.

    The *_gpu_compile tests lower every kernel to an H100 (sm_90) cubin this way without a GPU;
    the script prints "compiled" when it got through.
    """
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]
