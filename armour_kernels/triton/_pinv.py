"""The Nyström m×m pseudo-inverse in PyTorch fp32, for the Triton backend's m > PINV_MAX_M path
and its backward (differentiated with torch.func.vjp).

The iteration is docs/nystrom.md's (Razavi et al.): Z₀ = Aᵀ / (max row-abs-sum · max
col-abs-sum), then Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ))). "seed" takes the two maxima over the
whole batch (the paper's code), "clean" per matrix. Kernel code never imports python_ref (the
test oracle), so this is the backend's own copy; tests check it against python_ref.
"""
from __future__ import annotations

import torch


def landmark_pinv(a: torch.Tensor, iterations: int, mode: str) -> torch.Tensor:
    """Iterative Moore–Penrose pseudo-inverse of the (…, m, m) matrices `a`."""
    abs_a = a.abs()
    row_sums, col_sums = abs_a.sum(dim=-1), abs_a.sum(dim=-2)
    if mode == "seed":
        denom = row_sums.max() * col_sums.max()
    else:
        denom = (row_sums.amax(dim=-1) * col_sums.amax(dim=-1))[..., None, None]
    z = a.transpose(-1, -2) / denom
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z
