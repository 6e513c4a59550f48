"""python_ref's softmax attention (the definition every backend is tested against) against naive,
formula-level computations (tests/formulas.py): every value source, the bias, the diagonal mask,
the DeiT variants; gradients with gradcheck.
"""
import pytest
import torch

from formulas import F64, close, naive_attention, rand
from python_ref.attention import attention, attention_lse, deit_attention


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
