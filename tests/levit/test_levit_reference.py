"""python_ref's LeViT attention against formula-level computations: the relative-position bias index,
the table gather, LeViT attention (square and subsampled), gradcheck through the table."""
import pytest
import torch

from formulas import close, naive_attention, rand
from python_ref.attention import levit_attention, levit_bias, levit_bias_index


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
