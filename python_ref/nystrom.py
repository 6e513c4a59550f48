"""Reference Nyström attention (docs/nystrom.md), as lucidrains `nystrom-attention` 0.0.14 computes it.

Layout (B, H, N, D). The caller passes the unpadded q, k, v straight out of the
projection (q NOT yet scaled); this function front-pads, scales q, and trims, so that
it equals the original layer, whose `to_qkv` has no bias (zero rows in x give zero
rows in q, k, v).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("seed", "clean")


def razavi_pinv(a: torch.Tensor, iterations: int = 6, mode: str = "clean") -> torch.Tensor:
    """Iterative Moore–Penrose pseudo-inverse of the (…, m, m) matrix `a` (docs/nystrom.md, step 5).

    Z₀ = aᵀ / (max row-abs-sum · max col-abs-sum); Z ← ¼ Z (13I − aZ(15I − aZ(7I − aZ))).
    mode "seed": the two maxima over the whole batch (the paper's code, batch-dependent);
    mode "clean": per matrix, so each (batch, head) is independent of the others.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    abs_a = a.abs()
    row_sums = abs_a.sum(dim=-1)
    col_sums = abs_a.sum(dim=-2)
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


def landmarks(x: torch.Tensor, num_landmarks: int) -> torch.Tensor:
    """Means over contiguous groups of padded_n / m tokens (the input is already padded)."""
    *lead, n, d = x.shape
    return x.reshape(*lead, num_landmarks, n // num_landmarks, d).mean(dim=-2)


def front_pad(x: torch.Tensor, num_landmarks: int) -> torch.Tensor:
    """Zero rows in front so the sequence length divides by the number of landmarks."""
    remainder = x.shape[-2] % num_landmarks
    if remainder == 0:
        return x
    return F.pad(x, (0, 0, num_landmarks - remainder, 0))


def nystrom_attention(q, k, v=None, *, num_landmarks, pinv_iterations=6, mode="clean",
                      value="v", conv_weight=None):
    """Nyström approximation of softmax(q kᵀ / √d)·v, plus the depthwise residual conv.

    value="q" is the Armour form: the (unscaled) query is the value.
    conv_weight: the (H, 1, K, 1) weight of the residual Conv2d(h, h, (K, 1), groups=h), or None.
    The m×m work and the three softmaxes run in float32 at least (docs/nystrom.md).
    """
    if value not in ("v", "q"):
        raise ValueError(f"value must be 'v' or 'q', got {value!r}")
    if value == "q":
        v = q
    if v is None:
        raise ValueError("value='v' needs v")
    n, d = q.shape[-2], q.shape[-1]
    out_dtype = q.dtype
    work = torch.promote_types(q.dtype, torch.float32)
    q, k, v = (front_pad(t.to(work), num_landmarks) for t in (q, k, v))
    q = q * d ** -0.5
    q_l, k_l = landmarks(q, num_landmarks), landmarks(k, num_landmarks)
    a1 = torch.softmax(q @ k_l.transpose(-1, -2), dim=-1)      # (n, m)
    a2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)    # (m, m)
    a3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)      # (m, n)
    out = (a1 @ razavi_pinv(a2, pinv_iterations, mode)) @ (a3 @ v)
    if conv_weight is not None:
        kernel = conv_weight.shape[-2]
        out = out + F.conv2d(v, conv_weight.to(work), padding=(kernel // 2, 0), groups=v.shape[1])
    return out[..., -n:, :].to(out_dtype)

