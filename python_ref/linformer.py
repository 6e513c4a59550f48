"""Reference Linformer attention (Vision Xformers ViL: k = 64, shared key/value projection, one kv head).

Layout (B, H, N, D) for q; k is (B, 1, N, D) (one kv head, shared by all query heads) or (B, H, N, D).
`proj_k` is the learned (N, k) sequence projection; with a shared key/value projection the
value is the projected key (lucidrains `linformer`, share_kv=True).
"""
from __future__ import annotations

import torch


def linformer_attention(q, k, v=None, *, proj_k, proj_v=None, scale=None):
    """softmax(s·q (Eᵀk)ᵀ)·(Fᵀv), E = proj_k, F = proj_v (or E and k again when shared)."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    n = k.shape[-2]
    if proj_k.shape[0] != n:
        raise ValueError(f"proj_k has {proj_k.shape[0]} rows but the sequence has {n} tokens")
    if v is None:
        v, proj_v = k, proj_k
    k_low = torch.einsum("bhnd,nk->bhkd", k, proj_k)
    v_low = torch.einsum("bhnd,nk->bhkd", v, proj_v if proj_v is not None else proj_k)
    scores = (q @ k_low.transpose(-1, -2)) * scale
    return torch.softmax(scores, dim=-1) @ v_low
