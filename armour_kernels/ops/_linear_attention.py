"""What the linear-attention ops (Nyström, Performer) share: input checks, the value choice, layouts.

Both take FlashAttention's public layout (B, N, H, D) with any strides; python_ref works in
(B, H, N, D), so the "reference" backend transposes views in and out. How each family's ops are
registered and chosen is _linear_attention_ops.py.
"""
from __future__ import annotations

from ..constants import LINEAR_ATTENTION_VALUES as VALUES
from ..constants import MODES
from ._tensor_checks import check_bnhd


def heads_first(t):
    return t.transpose(1, 2) if t is not None else None


def check_choice(op: str, name: str, got, allowed) -> None:
    if got not in allowed:
        raise ValueError(f"{op}: {name} must be one of {allowed}, got {got!r}")


def check_tensor(op: str, name: str, t, like=None) -> None:
    check_bnhd(op, name, t, like)
    if t.shape[1] < 1 or t.shape[3] < 1:
        raise ValueError(f"{op}: {name} needs at least one token and one feature, got shape {tuple(t.shape)}")


def check_qkv(op: str, q, k, v, value: str, same_length: bool) -> None:
    """q, k (B, N, H, D) alike; v (B, Nk, H, Dv) iff value == "v"."""
    check_choice(op, "value", value, VALUES)
    check_tensor(op, "q", q)
    check_tensor(op, "k", k, like=q)
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"{op}: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in B, H and D")
    if (same_length or value == "q") and q.shape[1] != k.shape[1]:
        raise ValueError(f"{op}: q and k must have the same sequence length here, got {q.shape[1]} and {k.shape[1]}")
    if value == "v":
        if v is None:
            raise ValueError(f"{op}: value='v' needs v")
        check_tensor(op, "v", v, like=q)
        if v.shape[:3] != k.shape[:3]:
            raise ValueError(f"{op}: v {tuple(v.shape)} must match k {tuple(k.shape)} in B, N and H")
    elif v is not None:
        raise ValueError(f"{op}: v is given but value='q' uses the query as the value")

