"""Reference Performer (FAVOR+) attention (docs/performer.md), as performer-pytorch computes it.

Layout (B, H, N, D). `projection` is the (m, d) random-feature matrix.
"""
from __future__ import annotations

import math

import torch

KERNELS = ("softmax", "relu")
MODES = ("seed", "clean")


def gaussian_orthogonal_random_matrix(nb_rows: int, nb_columns: int, *, generator=None,
                                      dtype=torch.float32) -> torch.Tensor:
    """Orthogonal Gaussian blocks with rows rescaled by chi-distributed norms (performer-pytorch, scaling=0)."""
    blocks = []
    for _ in range(math.ceil(nb_rows / nb_columns)):
        g = torch.randn(nb_columns, nb_columns, generator=generator, dtype=torch.float64)
        qmat, _ = torch.linalg.qr(g)
        blocks.append(qmat.T)
    final = torch.cat(blocks, dim=0)[:nb_rows]
    multiplier = torch.randn(nb_rows, nb_columns, generator=generator, dtype=torch.float64).norm(dim=1)
    return (multiplier[:, None] * final).to(dtype)


def default_num_features(dim_head: int) -> int:
    """m = int(d · ln d), performer-pytorch's default (110 for d = 32)."""
    return int(dim_head * math.log(dim_head))


def softmax_features(x, projection, *, is_query, mode="clean"):
    """Positive random features of exp(q·k) (docs/performer.md), without the common m^-1/2 factor."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    dn = x.shape[-1] ** -0.25
    u = (dn * x) @ projection.to(x.dtype).T
    diag = (x * x).sum(dim=-1, keepdim=True) * (dn * dn) / 2
    if is_query:
        stab = u.amax(dim=-1, keepdim=True).detach()
    elif mode == "clean":
        stab = u.amax(dim=(-1, -2), keepdim=True).detach()
    else:
        stab = u.max()
    return torch.exp(u - diag - stab) + 1e-4


def relu_features(x, projection):
    """Generalised kernel features φ(x) = relu((dn·x)Pᵀ) + 1e-3."""
    dn = x.shape[-1] ** -0.25
    return torch.relu((dn * x) @ projection.to(x.dtype).T) + 1e-3


def linear_attention(phi_q, phi_k, v):
    """φ(q)(φ(k)ᵀv) / (φ(q)·Σₙφ(k)): attention in time linear in n."""
    context = phi_k.transpose(-1, -2) @ v
    normaliser = phi_q @ phi_k.sum(dim=-2).unsqueeze(-1)
    return (phi_q @ context) / normaliser


def performer_attention(q, k, v=None, *, projection, kernel="softmax", mode="clean", value="v"):
    """FAVOR+ attention. value="q" is the Armour form (the query is the value)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if value not in ("v", "q"):
        raise ValueError(f"value must be 'v' or 'q', got {value!r}")
    if value == "q":
        v = q
    if v is None:
        raise ValueError("value='v' needs v")
    if kernel == "softmax":
        phi_q = softmax_features(q, projection, is_query=True, mode=mode)
        phi_k = softmax_features(k, projection, is_query=False, mode=mode)
    else:
        phi_q, phi_k = relu_features(q, projection), relu_features(k, projection)
    return linear_attention(phi_q, phi_k, v)
