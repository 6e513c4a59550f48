"""python_ref's Nyström attention against docs/nystrom.md step by step (front padding, landmarks, three
softmaxes, Razavi's pinv, the residual conv), its batch behaviour per mode, exactness when every token
is a landmark, gradcheck."""
import pytest
import torch

from formulas import F64, close, naive_attention, rand
from python_ref.nystrom import nystrom_attention, razavi_pinv


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
