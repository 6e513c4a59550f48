"""Rotary position embedding for the fused modules' (B, N, H, D) heads (Vision Xformers §5.4).

RoPE rotates the query and the key, never the value. With Armour the value is the query as it
comes out of the projection, unrotated (docs/models.md), so once q is rotated it can no longer stand in
for the value: the unrotated q is passed as an explicit v (value "v") instead.
"""
from __future__ import annotations

import torch

from python_ref.rope import apply_rope, rope_angles


def rotate_heads(x: torch.Tensor) -> torch.Tensor:
    """RoPE over token positions 0..N-1 of x (B, N, H, D), as python_ref.vix rotates its (B, H, N, D) heads."""
    n, d = x.shape[1], x.shape[3]
    angles = rope_angles(n, d, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    return apply_rope(x, angles[:, None, :])  # (N, 1, D/2): the same angle for every head


def rotary_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, value: str):
    """(q, k, v, value) for an op after RoPE: q and k rotated; value "q" becomes v = the unrotated q."""
    if value == "q":
        v, value = q, "v"
    return rotate_heads(q), rotate_heads(k), v, value
