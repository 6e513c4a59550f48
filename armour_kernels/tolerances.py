"""The one tolerance table: how far a kernel's result may be from the float64 python_ref result.

Used by the tests, the main job's kernel checks and the GPU validation script alike
(docs/numerics.md explains the numbers). A result passes when

    |actual - expected| <= atol · max(1, max|expected|) · scale + rtol · scale · |expected|

elementwise, `scale` being a per-check factor that a check states with its reason (e.g. Nyström's
six pseudo-inverse iterations amplify rounding five-fold).
"""
from __future__ import annotations

import torch

# (atol, rtol) against a float64 reference, per input dtype.
TOLERANCES = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (2e-4, 2e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (6e-2, 6e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for results computed from inputs of `dtype`."""
    return TOLERANCES[dtype]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(1, max |expected|), in float64; NaN when actual has a NaN or inf
    where expected is finite (never a plausible number)."""
    expected = expected.detach().double()
    actual = actual.detach().double().to(expected.device)
    if not actual.numel():
        return 0.0
    if not torch.equal(torch.isfinite(actual), torch.isfinite(expected)):
        return float("nan")
    finite = torch.isfinite(expected)
    error = (actual[finite] - expected[finite]).abs().max().item() if finite.any() else 0.0
    return error / max(1.0, expected[finite].abs().max().item() if finite.any() else 1.0)


def allowed_error(dtype: torch.dtype, scale: float = 1.0) -> float:
    """The largest relative_error that passes for `dtype` (atol + rtol: the bound above at the largest
    |expected|, relative to it)."""
    atol, rtol = TOLERANCES[dtype]
    return (atol + rtol) * scale


__all__ = ["TOLERANCES", "tolerance", "relative_error", "allowed_error"]
