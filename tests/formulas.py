"""Formula-level computations written out with explicit loops, against which the tests of python_ref's
definitions check them (docs/attention.md and the family pages): slow and obviously right."""
import math

import torch

F64 = torch.float64


def rand(*shape, seed=None):
    """Random float64 inputs (a fresh draw unless `seed` is given)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(*shape, dtype=F64, generator=gen)


def close(actual, expected, tol=1e-10):
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


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
