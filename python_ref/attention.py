"""Reference softmax attention: the definition every fused kernel is checked against.

Layout is PyTorch's (B, H, N, D): one row per token, one (N, D) matrix per head.
Everything here is plain PyTorch and works in float64, so tests can compute the
"true" answer at high precision. Nothing here is fast on purpose.

docs/attention.md (DeiT family) and docs/levit.md (LeViT generalised Armour):

    value="v"    softmax(s·QKᵀ + bias)·V          regular (also shared_qk: pass k=q)
    value="q"    softmax(s·QKᵀ + bias)·Q          Armour: the query is the value
    value="k"    softmax(s·QKᵀ + bias)·K          shared_kv (W_K = W_V)
    value="q+v"  softmax(...)·[Q | V]             LeViT `armour`: value = concat(q, v_half)
    value="q+k"  softmax(...)·[Q | K]             LeViT `armour_plus`: value = concat(q, k)
"""
from __future__ import annotations

import torch

VALUE_SOURCES = ("v", "q", "k", "q+v", "q+k")

# The attention variants of docs/attention.md, as (value source, q is k, mask diagonal).
DEIT_VARIANTS = {
    "regular": ("v", False, False),
    "armour": ("q", False, False),
    "shared_kv": ("k", False, False),
    "shared_qk": ("v", True, False),
    "shared_qk_nodiag": ("v", True, True),
}


def value_tensor(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, value: str) -> torch.Tensor:
    """The matrix the attention weights multiply, built from the value source name."""
    if value not in VALUE_SOURCES:
        raise ValueError(f"value must be one of {VALUE_SOURCES}, got {value!r}")
    if "v" in value and v is None:
        raise ValueError(f"value={value!r} needs v")
    if "q" in value and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"value={value!r} needs as many queries as keys, got {q.shape[-2]} and {k.shape[-2]}")
    parts = {"v": [v], "q": [q], "k": [k], "q+v": [q, v], "q+k": [q, k]}[value]
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def attention_scores(q, k, *, scale=None, bias=None, mask_diagonal=False):
    """s·QKᵀ + bias, with the diagonal set to -inf where asked (docs/attention.md, `shared_qk_nodiag`).

    A row whose only finite score is on the diagonal keeps its diagonal: the paper's
    rule for a query with no other valid key (N = 1, say).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scores = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    if mask_diagonal:
        nq, nk = scores.shape[-2:]
        diag = torch.eye(nq, nk, dtype=torch.bool, device=scores.device)
        masked = scores.masked_fill(diag, float("-inf"))
        no_other_key = (masked == float("-inf")).all(dim=-1, keepdim=True)
        scores = torch.where(no_other_key, scores, masked)
    return scores


def attention_probs(scores):
    """softmax over the keys, with one addition: a row with no finite score (every key masked to -inf
    by the bias) has no weights at all — all zeros, so its output is 0 · value and no gradient flows
    from it (PyTorch's scaled_dot_product_attention does the same; softmax alone would give NaN).

    Only -inf masks a row: a NaN score anywhere in it makes the whole row NaN, as softmax does. A
    NaN that reaches a masked row otherwise (through 0 · NaN in the value, forward or backward) stays
    NaN too, as in SDPA, rather than becoming a confident 0: the masked rows' zeros are a product with
    the row mask, not a fill, and their -inf scores are made finite by nan_to_num, whose gradient is
    the incoming one times 0 there (a fill's would be 0)."""
    empty = (scores == float("-inf")).all(dim=-1, keepdim=True)
    finite = scores.nan_to_num(nan=float("nan"), posinf=float("inf"), neginf=0.0)
    return torch.softmax(torch.where(empty, finite, scores), dim=-1) * ~empty


def attention(q, k, v=None, *, value="v", scale=None, bias=None, mask_diagonal=False):
    """softmax(scale·q·kᵀ + bias)·value, per head. Shapes (B, H, N, D); bias broadcasts to (B, H, Nq, Nk)."""
    scores = attention_scores(q, k, scale=scale, bias=bias, mask_diagonal=mask_diagonal)
    return attention_probs(scores) @ value_tensor(q, k, v, value)


def attention_lse(q, k, *, scale=None, bias=None, mask_diagonal=False):
    """Row log-sum-exp of the scores: what flash-style kernels save for the backward pass."""
    scores = attention_scores(q, k, scale=scale, bias=bias, mask_diagonal=mask_diagonal)
    return torch.logsumexp(scores, dim=-1)


def deit_attention(q, k, v=None, *, variant="regular", scale=None):
    """The DeiT attention variants of docs/attention.md by name.

    `shared_qk*` use q as the key (pass k=None or anything: it is ignored)."""
    if variant not in DEIT_VARIANTS:
        raise ValueError(f"unknown attention variant {variant!r}; expected one of {tuple(DEIT_VARIANTS)}")
    value, q_is_k, mask_diagonal = DEIT_VARIANTS[variant]
    if q_is_k:
        k = q
    return attention(q, k, v, value=value, scale=scale, mask_diagonal=mask_diagonal)


# ----------------------------------------------------------------------------- LeViT

def levit_bias_index(resolution: int, stride: int = 1) -> torch.Tensor:
    """LeViT's relative-position index: idx[i, j] = |dy|·res + |dx| (docs/levit.md).

    Queries sit on the grid subsampled by `stride` (1: the same grid as the keys),
    keys on the full `resolution`×`resolution` grid. Returns int64 (Nq, Nk).
    """
    ys, xs = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    k_pos = torch.stack([ys.flatten(), xs.flatten()], dim=1)
    q_res = (resolution - 1) // stride + 1
    qy, qx = torch.meshgrid(torch.arange(q_res) * stride, torch.arange(q_res) * stride, indexing="ij")
    q_pos = torch.stack([qy.flatten(), qx.flatten()], dim=1)
    rel = (q_pos[:, None, :] - k_pos[None, :, :]).abs()
    return rel[..., 0] * resolution + rel[..., 1]


def levit_bias(attention_biases: torch.Tensor, bias_index: torch.Tensor) -> torch.Tensor:
    """Gather the learned (H, R) table into the dense (H, Nq, Nk) additive bias."""
    return attention_biases[:, bias_index]


def levit_attention(q, k, v=None, *, attention_biases, bias_index, value="v", scale=None):
    """LeViT attention core (before Hardswish and `proj`): softmax(s·qkᵀ + table[idx])·value.

    value="v" is LeViT, "q+v" the generalised `armour`, "q+k" `armour_plus` (docs/levit.md).
    """
    bias = levit_bias(attention_biases, bias_index)
    return attention(q, k, v, value=value, scale=scale, bias=bias)
