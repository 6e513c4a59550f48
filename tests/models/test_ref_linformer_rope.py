"""python_ref's Linformer attention and rotary position embedding (ViX model pieces with no kernel of
their own) against formula-level computations, with gradcheck."""
import math

import pytest
import torch

from formulas import F64, close, rand
from python_ref.linformer import linformer_attention
from python_ref.rope import apply_rope, rope_angles


def naive_linformer(q, k, v, proj_k, proj_v):
    B, H, N, D = q.shape
    kv_heads = k.shape[1]
    out = torch.empty(B, H, N, v.shape[-1], dtype=F64)
    for b in range(B):
        for h in range(H):
            g = h if kv_heads == H else 0
            k_low = sum(proj_k[n, :, None] * k[b, g, n][None, :] for n in range(N))  # (k, D)
            v_low = sum(proj_v[n, :, None] * v[b, g, n][None, :] for n in range(N))
            out[b, h] = torch.softmax(q[b, h] @ k_low.T * D ** -0.5, -1) @ v_low
    return out


def test_linformer_shared_one_kv_head_and_separate():
    q, k = rand(2, 3, 9, 4), rand(2, 1, 9, 4)
    e, f = rand(9, 5), rand(9, 5)
    close(linformer_attention(q, k, proj_k=e), naive_linformer(q, k, k, e, e))
    k3, v3 = rand(2, 3, 9, 4), rand(2, 3, 9, 4)
    close(linformer_attention(q, k3, v3, proj_k=e, proj_v=f), naive_linformer(q, k3, v3, e, f))
    with pytest.raises(ValueError, match="rows"):
        linformer_attention(q, k, proj_k=rand(8, 5))
    args = tuple(t.requires_grad_() for t in (rand(1, 2, 4, 3), rand(1, 1, 4, 3), rand(4, 2)))
    assert torch.autograd.gradcheck(lambda q, k, e: linformer_attention(q, k, proj_k=e), args)


# ----------------------------------------------------------------------------- RoPE

def test_rope_against_formula():
    x = rand(2, 3, 5, 6)
    out = apply_rope(x, rope_angles(5, 6, dtype=F64))
    expected = torch.empty_like(x)
    for p in range(5):
        for i in range(3):
            theta = p * 10000.0 ** (-2 * i / 6)
            x0, x1 = x[..., p, 2 * i], x[..., p, 2 * i + 1]
            expected[..., p, 2 * i] = x0 * math.cos(theta) - x1 * math.sin(theta)
            expected[..., p, 2 * i + 1] = x0 * math.sin(theta) + x1 * math.cos(theta)
    close(out, expected)


def test_rope_scores_depend_on_relative_position_only():
    q, k = rand(8), rand(8)
    angles = rope_angles(12, 8, dtype=F64)
    rotated_q = apply_rope(q.expand(12, 8), angles)
    rotated_k = apply_rope(k.expand(12, 8), angles)
    close(rotated_q[2] @ rotated_k[5], rotated_q[6] @ rotated_k[9])
    close(rotated_q[0] @ rotated_k[0], q @ k)  # position 0 is not rotated


def test_rope_gradcheck_and_odd_dim():
    angles = rope_angles(4, 4, dtype=F64)
    assert torch.autograd.gradcheck(lambda x: apply_rope(x, angles), (rand(1, 2, 4, 4).requires_grad_(),))
    with pytest.raises(ValueError, match="even"):
        rope_angles(4, 5)
