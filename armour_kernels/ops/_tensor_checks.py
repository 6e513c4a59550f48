"""The argument check every (B, N, H, D) op shares, with the op's name in its messages."""
from __future__ import annotations

from torch import Tensor


def check_bnhd(op: str, name: str, t, like=None) -> None:
    """TypeError / ValueError unless `t` is a floating-point (B, N, H, D) tensor (of q's dtype and
    device when `like` is q)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{op}: {name} must be (B, N, H, D), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if like is not None and (t.dtype != like.dtype or t.device != like.device):
        raise TypeError(f"{op}: {name} is {t.dtype} on {t.device} but q is {like.dtype} on {like.device}")
