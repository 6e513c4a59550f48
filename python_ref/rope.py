"""Reference rotary position embedding (RoPE, Vision Xformers §5.4).

Rotates q and k (never v). With Armour the value is the *unrotated* q (docs/models.md).
Layout (B, H, N, D), D even; position p rotates the pair (x[2i], x[2i+1]) by p·θᵢ,
θᵢ = base^(-2i/D).
"""
from __future__ import annotations

import torch


def rope_angles(n: int, dim: int, *, base: float = 10000.0, device=None, dtype=torch.float32):
    """(N, D/2) rotation angles p·θᵢ."""
    if dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {dim}")
    inv_freq = base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)
    pos = torch.arange(n, device=device, dtype=torch.float64)
    return torch.outer(pos, inv_freq).to(dtype)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of the last dim of x (…, N, D) by `angles` (N, D/2)."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], dim=-1)
    return rotated.flatten(-2)
