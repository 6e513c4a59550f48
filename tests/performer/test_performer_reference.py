"""python_ref's Performer (FAVOR+) against docs/performer.md in its quadratic form, the batch behaviour of
the key stabiliser per mode, the orthogonal random features, gradcheck."""
import pytest
import torch

from formulas import F64, close, naive_attention, rand
from python_ref.performer import (default_num_features, gaussian_orthogonal_random_matrix, performer_attention,
                                  relu_features, softmax_features)


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
    k = rand(2, 1, 6, 4)
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
