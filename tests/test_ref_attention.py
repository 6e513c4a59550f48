"""python_ref attention functions against naive, formula-level computations written here.

Every reference is re-derived from the docs/ formulas with explicit loops (or einsum), on random
float64 inputs; gradients are checked with gradcheck where the function is smooth and cheap.
"""
import math

import pytest
import torch

from python_ref.attention import (attention, attention_lse, deit_attention, levit_attention, levit_bias,
                                  levit_bias_index)
from python_ref.linformer import linformer_attention
from python_ref.nystrom import nystrom_attention, razavi_pinv
from python_ref.performer import (default_num_features, gaussian_orthogonal_random_matrix, performer_attention,
                                  relu_features, softmax_features)
from python_ref.rope import apply_rope, rope_angles

F64 = torch.float64


def rand(*shape, seed=None):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(*shape, dtype=F64, generator=gen)


def close(actual, expected, tol=1e-10):
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


# ----------------------------------------------------------------------------- softmax attention

def naive_attention(q, k, v, value="v", scale=None, bias=None, mask_diagonal=False):
    """Row by row: s·q_i·k_j + bias_ij, diagonal masked unless it is the only finite key, softmax, weighted sum."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    out = []
    for b in range(B):
        for h in range(H):
            vals = {"v": v, "q": q, "k": k}
            value_rows = torch.cat([vals[part][b, h] for part in value.split("+")], dim=-1)
            for i in range(Nq):
                scores = [scale * (q[b, h, i] * k[b, h, j]).sum() for j in range(Nk)]
                if bias is not None:
                    scores = [scores[j] + bias[b, h, i, j] for j in range(Nk)]
                if mask_diagonal and i < Nk:
                    others_finite = any(math.isfinite(scores[j].item()) for j in range(Nk) if j != i)
                    if others_finite:
                        scores[i] = torch.tensor(float("-inf"), dtype=F64)
                top = max(s.item() for s in scores)
                weights = [torch.exp(s - top) for s in scores]
                total = sum(weights)
                out.append(sum(weights[j] / total * value_rows[j] for j in range(Nk)))
    return torch.stack(out).view(B, H, Nq, -1)


def naive_lse(q, k, scale=None, bias=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale + (0 if bias is None else bias)
    top = scores.amax(-1, keepdim=True)
    return (top + (scores - top).exp().sum(-1, keepdim=True).log()).squeeze(-1)


@pytest.mark.parametrize("value", ["v", "q", "k", "q+v", "q+k"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_every_value_source(value, with_bias):
    q, k, v = rand(2, 2, 6, 4), rand(2, 2, 6, 4), rand(2, 2, 6, 3)
    bias = rand(2, 2, 6, 6) if with_bias else None
    close(attention(q, k, v, value=value, bias=bias), naive_attention(q, k, v, value, bias=bias))
    close(attention_lse(q, k, bias=bias), naive_lse(q, k, bias=bias))


def test_attention_cross_lengths_scale_and_broadcast_bias():
    q, k, v = rand(1, 3, 4, 5), rand(1, 3, 7, 5), rand(1, 3, 7, 2)
    bias = rand(3, 4, 7)  # broadcasts over the batch
    close(attention(q, k, v, scale=0.3, bias=bias),
          naive_attention(q, k, v, scale=0.3, bias=bias.expand(1, 3, 4, 7)))


def test_value_with_query_needs_as_many_queries_as_keys():
    with pytest.raises(ValueError, match="as many queries as keys"):
        attention(rand(1, 1, 3, 4), rand(1, 1, 5, 4), value="q")
    with pytest.raises(ValueError, match="needs v"):
        attention(rand(1, 1, 3, 4), rand(1, 1, 3, 4), value="q+v")
    with pytest.raises(ValueError, match="value must be one of"):
        attention(rand(1, 1, 3, 4), rand(1, 1, 3, 4), rand(1, 1, 3, 4), value="w")


@pytest.mark.parametrize("n", [1, 2, 5])
def test_mask_diagonal(n):
    q, v = rand(2, 2, n, 4), rand(2, 2, n, 4)
    out = attention(q, q, v, mask_diagonal=True)
    close(out, naive_attention(q, q, v, mask_diagonal=True))
    if n == 1:  # the only key is the diagonal: it is kept, the output is v itself
        close(out, v)


def test_mask_diagonal_keeps_diagonal_when_no_other_key_is_finite():
    q, v = rand(1, 1, 4, 3), rand(1, 1, 4, 3)
    bias = torch.zeros(1, 1, 4, 4, dtype=F64)
    bias[..., 2, :] = float("-inf")
    bias[..., 2, 2] = 0.0  # row 2 can only see itself
    out = attention(q, q, v, bias=bias, mask_diagonal=True)
    close(out[..., 2, :], v[..., 2, :])
    close(out, naive_attention(q, q, v, bias=bias, mask_diagonal=True))


@pytest.mark.parametrize("variant, value, key_is_query, mask", [
    ("regular", "v", False, False), ("armour", "q", False, False), ("shared_kv", "k", False, False),
    ("shared_qk", "v", True, False), ("shared_qk_nodiag", "v", True, True)])
def test_deit_attention_variants(variant, value, key_is_query, mask):
    q, k, v = rand(2, 3, 5, 4), rand(2, 3, 5, 4), rand(2, 3, 5, 4)
    expected = naive_attention(q, q if key_is_query else k, v, value, mask_diagonal=mask)
    close(deit_attention(q, k, v, variant=variant), expected)
    with pytest.raises(ValueError, match="armour"):
        deit_attention(q, k, v, variant="nope")


def test_attention_gradcheck():
    q, k, v = (rand(1, 2, 4, 3).requires_grad_() for _ in range(3))
    bias = rand(1, 2, 4, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda q, k, v, b: attention(q, k, v, value="q+v", bias=b), (q, k, v, bias))
    assert torch.autograd.gradcheck(lambda q, v: attention(q, q, v, mask_diagonal=True), (q, v))


# ----------------------------------------------------------------------------- LeViT

def naive_bias_index(resolution, stride=1):
    keys = [(y, x) for y in range(resolution) for x in range(resolution)]
    queries = [(y, x) for y in range(0, resolution, stride) for x in range(0, resolution, stride)]
    return torch.tensor([[abs(qy - ky) * resolution + abs(qx - kx) for (ky, kx) in keys] for (qy, qx) in queries])


@pytest.mark.parametrize("resolution, stride", [(1, 1), (4, 1), (7, 2), (4, 2), (14, 1)])
def test_levit_bias_index(resolution, stride):
    idx = levit_bias_index(resolution, stride)
    assert idx.dtype == torch.int64
    assert torch.equal(idx, naive_bias_index(resolution, stride))


@pytest.mark.parametrize("value", ["v", "q+v", "q+k"])
def test_levit_attention(value):
    res, H, D = 3, 2, 4
    n = res * res
    q, k, v = rand(2, H, n, D), rand(2, H, n, D), rand(2, H, n, 2 * D if value == "v" else D)
    table = rand(H, n)
    idx = levit_bias_index(res)
    dense = torch.stack([torch.stack([torch.stack([table[h, idx[i, j]] for j in range(n)]) for i in range(n)])
                         for h in range(H)])
    close(levit_bias(table, idx), dense)
    out = levit_attention(q, k, v, attention_biases=table, bias_index=idx, value=value)
    close(out, naive_attention(q, k, v, value, bias=dense.expand(2, H, n, n)))
    assert out.shape[-1] == 2 * D


def test_levit_subsample_attention_and_gradcheck():
    res, H, D = 4, 2, 3
    idx = levit_bias_index(res, 2)
    q, k, v = rand(1, H, 4, D), rand(1, H, 16, D), rand(1, H, 16, 2 * D)
    table = rand(H, 16)
    close(levit_attention(q, k, v, attention_biases=table, bias_index=idx),
          naive_attention(q, k, v, bias=table[:, idx].unsqueeze(0)))
    args = tuple(t.requires_grad_() for t in (q, k, v, table))
    assert torch.autograd.gradcheck(lambda q, k, v, t: levit_attention(q, k, v, attention_biases=t, bias_index=idx),
                                    args)


# ----------------------------------------------------------------------------- Nyström

def naive_nystrom(q, k, v, m, iterations=6, mode="clean", conv_weight=None):
    """docs/nystrom.md step by step: front-pad, landmarks, three softmaxes, Razavi pinv, residual conv, trim."""
    B, H, n, d = q.shape
    pad = (m - n % m) % m
    zeros = torch.zeros(B, H, pad, d, dtype=F64)
    q, k, v = (torch.cat([zeros[..., :t.shape[-1]], t], dim=2) for t in (q, k, v))
    q = q * d ** -0.5
    l = q.shape[2] // m
    q_l = torch.stack([q[:, :, g * l:(g + 1) * l].mean(2) for g in range(m)], dim=2)
    k_l = torch.stack([k[:, :, g * l:(g + 1) * l].mean(2) for g in range(m)], dim=2)
    a1 = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k_l), -1)
    a2 = torch.softmax(torch.einsum("bhid,bhjd->bhij", q_l, k_l), -1)
    a3 = torch.softmax(torch.einsum("bhid,bhjd->bhij", q_l, k), -1)
    z = torch.empty_like(a2)
    global_denominator = a2.abs().sum(-1).max() * a2.abs().sum(-2).max()
    for b in range(B):
        for h in range(H):
            a = a2[b, h]
            denominator = global_denominator if mode == "seed" else a.abs().sum(1).max() * a.abs().sum(0).max()
            zz = a.T / denominator
            eye = torch.eye(m, dtype=F64)
            for _ in range(iterations):
                az = a @ zz
                zz = 0.25 * zz @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
            z[b, h] = zz
    out = (a1 @ z) @ (a3 @ v)
    if conv_weight is not None:
        K = conv_weight.shape[2]
        N = v.shape[2]
        res = torch.zeros_like(v)
        for h in range(H):
            for i in range(N):
                for t in range(K):
                    j = i + t - K // 2
                    if 0 <= j < N:
                        res[:, h, i] += conv_weight[h, 0, t, 0] * v[:, h, j]
        out = out + res
    return out[:, :, -n:]


@pytest.mark.parametrize("n, m", [(16, 4), (10, 4), (3, 4), (9, 1)])
@pytest.mark.parametrize("mode", ["clean", "seed"])
def test_nystrom_against_formula(n, m, mode):
    q, k, v = rand(2, 2, n, 4), rand(2, 2, n, 4), rand(2, 2, n, 4)
    conv = rand(2, 1, 5, 1)
    close(nystrom_attention(q, k, v, num_landmarks=m, mode=mode, conv_weight=conv),
          naive_nystrom(q, k, v, m, mode=mode, conv_weight=conv))
    close(nystrom_attention(q, k, None, num_landmarks=m, mode=mode, value="q"),
          naive_nystrom(q, k, q, m, mode=mode))


def test_nystrom_clean_is_batch_invariant_seed_is_not():
    q, k, v = rand(3, 2, 12, 4, seed=1), rand(3, 2, 12, 4, seed=2), rand(3, 2, 12, 4, seed=3)
    q[1] *= 4  # a very different sample changes the seed-mode scaling of the others
    clean = nystrom_attention(q, k, v, num_landmarks=4, mode="clean")
    close(nystrom_attention(q[:1], k[:1], v[:1], num_landmarks=4, mode="clean"), clean[:1])
    seed = nystrom_attention(q, k, v, num_landmarks=4, mode="seed")
    assert not torch.allclose(nystrom_attention(q[:1], k[:1], v[:1], num_landmarks=4, mode="seed"), seed[:1])


def test_nystrom_is_exact_when_every_token_is_a_landmark():
    """m = n: A2 = A3 = the full attention and A1 Z = I after enough iterations."""
    q, k, v = rand(1, 1, 4, 3) * 0.3, rand(1, 1, 4, 3) * 0.3, rand(1, 1, 4, 3)
    out = nystrom_attention(q, k, v, num_landmarks=4, pinv_iterations=30)
    close(out, naive_attention(q, k, v), tol=1e-6)


def test_razavi_pinv_and_errors():
    a = torch.softmax(rand(2, 3, 5, 5), -1)
    close(razavi_pinv(a, iterations=40) @ a, torch.eye(5, dtype=F64).expand(2, 3, 5, 5), tol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        razavi_pinv(a, mode="fast")
    with pytest.raises(ValueError, match="value"):
        nystrom_attention(rand(1, 1, 4, 2), rand(1, 1, 4, 2), rand(1, 1, 4, 2), num_landmarks=2, value="k")


def test_nystrom_gradcheck():
    args = tuple(t.requires_grad_() for t in (rand(1, 2, 5, 3), rand(1, 2, 5, 3), rand(1, 2, 5, 3), rand(2, 1, 3, 1)))
    assert torch.autograd.gradcheck(
        lambda q, k, v, w: nystrom_attention(q, k, v, num_landmarks=2, conv_weight=w), args)


# ----------------------------------------------------------------------------- Performer

def naive_performer(q, k, v, proj, kernel="softmax", mode="clean"):
    """docs/performer.md with the quadratic form: out_i = Σ_j (φq_i·φk_j) v_j / Σ_j (φq_i·φk_j)."""
    d = q.shape[-1]
    dn = d ** -0.25

    def u_and_diag(x):
        u = torch.einsum("bhnd,md->bhnm", dn * x, proj)
        return u, (x * x).sum(-1, keepdim=True) * dn * dn / 2

    if kernel == "relu":
        phi_q = torch.relu(torch.einsum("bhnd,md->bhnm", dn * q, proj)) + 1e-3
        phi_k = torch.relu(torch.einsum("bhnd,md->bhnm", dn * k, proj)) + 1e-3
    else:
        uq, dq = u_and_diag(q)
        uk, dk = u_and_diag(k)
        phi_q = torch.exp(uq - dq - uq.amax(-1, keepdim=True).detach()) + 1e-4
        key_max = uk.amax(dim=(-1, -2), keepdim=True).detach() if mode == "clean" else uk.max()
        phi_k = torch.exp(uk - dk - key_max) + 1e-4
    weights = torch.einsum("bhim,bhjm->bhij", phi_q, phi_k)
    return torch.einsum("bhij,bhjd->bhid", weights, v) / weights.sum(-1, keepdim=True)


@pytest.mark.parametrize("kernel, mode", [("softmax", "clean"), ("softmax", "seed"), ("relu", "clean")])
def test_performer_against_formula(kernel, mode):
    q, k, v = rand(2, 2, 7, 8), rand(2, 2, 7, 8), rand(2, 2, 7, 5)
    proj = gaussian_orthogonal_random_matrix(20, 8, dtype=F64)
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    out = performer_attention(*args, projection=proj, kernel=kernel, mode=mode)
    ref_args = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = naive_performer(*ref_args, proj, kernel, mode)
    close(out, expected)
    grad = rand(*out.shape)
    out.backward(grad)
    expected.backward(grad)
    for a, r in zip(args, ref_args):
        close(a.grad, r.grad, tol=1e-9)
    close(performer_attention(q, k, projection=proj, kernel=kernel, mode=mode, value="q"),
          naive_performer(q, k, q, proj, kernel, mode))


def test_performer_clean_keys_are_batch_invariant():
    q, k = rand(2, 1, 6, 4), rand(2, 1, 6, 4)
    k[1] *= 5
    proj = gaussian_orthogonal_random_matrix(12, 4, dtype=F64)
    close(softmax_features(k, proj, is_query=False, mode="clean")[:1],
          softmax_features(k[:1], proj, is_query=False, mode="clean"))
    assert not torch.allclose(softmax_features(k, proj, is_query=False, mode="seed")[:1],
                              softmax_features(k[:1], proj, is_query=False, mode="seed"))


def test_performer_approximates_softmax_attention_with_many_features():
    """A loose sanity check: FAVOR+ is an estimator of softmax attention (the +1e-4 floor biases it a little)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 5, 4, dtype=F64, generator=gen) * 0.5 for _ in range(3))
    proj = gaussian_orthogonal_random_matrix(2000, 4, generator=gen, dtype=F64)
    close(performer_attention(q, k, v, projection=proj), naive_attention(q, k, v), tol=0.05)


def test_random_features_are_orthogonal_blocks():
    gen = torch.Generator().manual_seed(0)
    p = gaussian_orthogonal_random_matrix(110, 32, generator=gen, dtype=F64)
    assert p.shape == (110, 32) and default_num_features(32) == 110
    for start in range(0, 110, 32):
        block = p[start:start + 32]
        gram = block @ block.T
        close(gram, torch.diag(torch.diagonal(gram)), tol=1e-9)  # rows orthogonal, chi-distributed norms


def test_performer_gradcheck_and_errors():
    proj = gaussian_orthogonal_random_matrix(6, 3, dtype=F64)
    args = tuple(rand(1, 1, 4, 3).requires_grad_() for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: performer_attention(q, k, v, projection=proj, kernel="relu"),
                                    args)
    close(relu_features(args[0], proj), torch.relu((3 ** -0.25 * args[0]) @ proj.T) + 1e-3)
    with pytest.raises(ValueError, match="kernel"):
        performer_attention(*args, projection=proj, kernel="cos")
    with pytest.raises(ValueError, match="mode"):
        softmax_features(args[0], proj, is_query=False, mode="other")


# ----------------------------------------------------------------------------- Linformer

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
    q, k, v = rand(2, 3, 9, 4), rand(2, 1, 9, 4), rand(2, 1, 9, 4)
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
