"""NaN through the Triton kernels, in the interpreter with the GPU's max rule (docs/numerics.md).

A NaN input gives NaN where PyTorch's SDPA / python_ref give NaN (forward and gradients); only a
row masked by -inf alone is fully masked (output 0, no gradient). On a GPU tl.max / tl.maximum
skip NaN (IEEE maxNum); the interpreter's tl.maximum propagates it instead, so the fixture
`gpu_max_rule` gives the interpreter the GPU's rule: what passes here is what the compiled
kernels compute. Compared with equal_nan: a NaN must sit exactly where the reference has one.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import armour_kernels
import python_ref
from helpers import HAS_CUDA, tolerance

NAN, NEG = float("nan"), float("-inf")
DTYPES = [torch.float32, torch.float16]
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def gpu_max_rule(monkeypatch):
    """tl.maximum / tl.minimum with the GPU's default rule (maxNum / minNum: a NaN operand is skipped)."""
    if HAS_CUDA:
        return
    from triton.runtime import interpreter
    builder = interpreter.InterpreterBuilder
    monkeypatch.setattr(builder, "create_maxnumf", lambda self, a, b: self.binary_op(a, b, np.fmax))
    monkeypatch.setattr(builder, "create_minnumf", lambda self, a, b: self.binary_op(a, b, np.fmin))


def _close(actual, expected, dtype, what, more_nan=False):
    """Within the dtype's tolerance, NaN exactly where expected has one; with `more_nan`, NaN at
    least there (and the rest compared where both are finite)."""
    atol, rtol = tolerance(dtype)
    expected, actual = expected.double().cpu(), actual.double().cpu()
    if more_nan:
        assert actual.isnan()[expected.isnan()].all(), f"{what}: a NaN of the reference is missing"
        expected = torch.where(actual.isnan(), NAN, expected)
    scale = max(1.0, expected.nan_to_num(0, 0, 0).abs().max().item())
    torch.testing.assert_close(actual, expected, atol=atol * scale, rtol=rtol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def _grads(out, leaves, dout):
    return torch.autograd.grad(out, [t for t in leaves if t is not None], dout, allow_unused=True)


# ----------------------------------------------------------------------------- attention vs SDPA

def _attention_case(kind, dtype):
    gen = torch.Generator().manual_seed(0)
    batch, n, heads, d = 2, 41, 2, 16  # 41: a partial last block of every tile size
    q, k, v = (torch.randn(batch, n, heads, d, generator=gen) for _ in range(3))
    bias = torch.randn(heads, n, n, generator=gen)
    if kind == "q":
        q[1, 3, 0, 5] = NAN               # one query row of one head
    elif kind == "k":
        k[0, 37, 1, 2] = NAN              # every row of that (b, h), in the last key block
    elif kind == "v":
        v[0, 5, 0, 0] = NAN               # one output feature of every row of that (b, h)
    elif kind == "bias":
        bias[1, 7, 33] = NAN              # one score: row 7 of head 1 in every image
    elif kind == "masked":
        bias[0, 4] = NEG                  # fully masked row: output 0, no gradient
        bias[1, 9, :40] = NEG
        bias[1, 9, 40] = NAN              # masked but for one NaN: a NaN row, not a masked one
    return q, k, v, bias


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["q", "k", "v", "bias", "masked"])
def test_attention_nan_matches_sdpa(kind, dtype):
    q, k, v, bias = _attention_case(kind, dtype)
    ours = [t.to(DEVICE, dtype).requires_grad_() for t in (q, k, v, bias)]
    refs = [t.double().requires_grad_() for t in (q, k, v, bias)]
    out = armour_kernels.attention(*ours[:3], bias=ours[3], backend="triton")
    want = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in refs[:3]), attn_mask=refs[3]).transpose(1, 2)
    if kind == "masked":  # SDPA's math path gives a fully masked row NaN or 0 by version: the op's rule is 0
        want = torch.where(torch.isneginf(refs[3]).all(-1)[None, :, :, None].transpose(1, 2), 0.0, want)
    _close(out, want, dtype, f"out ({kind})")
    assert out.isnan().any()
    dout = torch.randn(want.shape, dtype=torch.float64)
    got = _grads(out, ours, dout.to(DEVICE, dtype))
    expected = _grads(want, refs, dout)
    for name, g, w in zip(("dq", "dk", "dv", "dbias"), got, expected):
        _close(g, w, dtype, f"{name} ({kind})")


def test_fully_masked_row_is_zero_without_gradient():
    q, k, v, bias = _attention_case("masked", torch.float32)
    bias[1, 9, 40] = NEG  # now a second fully masked row
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = armour_kernels.attention(*leaves, bias=bias, backend="triton")
    assert torch.isfinite(out).all()
    assert out[:, 4, 0].abs().max() == 0 and out[:, 9, 1].abs().max() == 0
    dq, dk, dv = torch.autograd.grad(out, leaves, torch.randn_like(out))
    assert dq[:, 4, 0].abs().max() == 0 and dq[:, 9, 1].abs().max() == 0
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))


@pytest.mark.parametrize("value", ["q", "q+k"])
def test_table_bias_nan_reaches_its_rows(value):
    """A NaN table entry: every score gathered from it is NaN (LeViT table, value read in place)."""
    gen = torch.Generator().manual_seed(1)
    q, k = (torch.randn(1, 20, 2, 16, generator=gen) for _ in range(2))
    table = torch.randn(2, 7, generator=gen)
    index = torch.randint(0, 7, (20, 20), generator=gen)
    table[1, 3] = NAN
    out = armour_kernels.attention(q, k, value=value, bias=table, bias_index=index, backend="triton")
    dense = python_ref.levit_bias(table.double(), index)
    want = python_ref.attention(q.double().transpose(1, 2), k.double().transpose(1, 2), value=value,
                                bias=dense).transpose(1, 2)
    _close(out, want, torch.float32, "out")
    assert out[0, :, 1].isnan().any(-1).tolist() == (index == 3).any(-1).tolist()


# ----------------------------------------------------------------------------- Nyström, Performer vs python_ref

def _linear_leaves(dtype, where):
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 45, 2, 16, generator=gen) for _ in range(3))
    {"q": q, "k": k, "v": v}[where][1, 44, 1, 3] = NAN  # one (b, h)'s last row
    return q, k, v


def _check_against_reference(run_ours, run_ref, leaves, dtype, what, seed=False):
    ours = [t.to(DEVICE, dtype).requires_grad_() for t in leaves]
    refs = [t.double().requires_grad_() for t in leaves]
    out, want = run_ours(*ours), run_ref(*refs)
    assert want.isnan().any(), "the case must put a NaN in the reference"
    _close(out, want, dtype, f"{what} out")
    dout = torch.randn(want.shape, dtype=torch.float64)
    for i, (g, w) in enumerate(zip(_grads(out, ours, dout.to(DEVICE, dtype)), _grads(want, refs, dout))):
        # seed mode: the batch-wide max's gradient goes to every tied maximum, and which row sums tie
        # depends on rounding (fp32 here, float64 there), so a NaN may reach more heads than in
        # the reference (never fewer).
        _close(g, w, dtype, f"{what} grad {i}", more_nan=seed)


def _heads_first(*ts):
    return [t.transpose(1, 2) for t in ts]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["clean", "seed"])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nystrom_nan_matches_reference(where, mode, dtype):
    def ours(q, k, v):
        return armour_kernels.nystrom_attention(q, k, v, num_landmarks=8, mode=mode, backend="triton")

    def ref(q, k, v):
        return python_ref.nystrom_attention(*_heads_first(q, k, v), num_landmarks=8, mode=mode).transpose(1, 2)

    _check_against_reference(ours, ref, _linear_leaves(dtype, where), dtype, f"nystrom {mode} NaN in {where}",
                             seed=mode == "seed")


@pytest.mark.parametrize("kernel, mode", [("softmax", "clean"), ("softmax", "seed"), ("relu", "clean")])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_performer_nan_matches_reference(where, kernel, mode):
    torch.manual_seed(3)
    projection = python_ref.gaussian_orthogonal_random_matrix(24, 16)

    def ours(q, k, v):
        return armour_kernels.performer_attention(q, k, v, projection=projection.to(DEVICE), kernel=kernel, mode=mode,
                                                  backend="triton")

    def ref(q, k, v):
        return python_ref.performer_attention(*_heads_first(q, k, v), projection=projection.double(), kernel=kernel,
                                              mode=mode).transpose(1, 2)

    _check_against_reference(ours, ref, _linear_leaves(torch.float32, where), torch.float32,
                             f"performer {kernel} {mode} NaN in {where}", seed=mode == "seed")


def test_linear_act_nan_stays_in_its_row():
    from armour_kernels.triton.linear_act import linear_act_forward
    x, w, b = torch.randn(37, 24), torch.randn(40, 24), torch.randn(40)
    x[5, 3] = NAN
    for act_in in (False, True):
        y = linear_act_forward(x, w, b, act_in=act_in, act_out=not act_in)
        want = F.linear(F.hardswish(x.double()) if act_in else x.double(), w.double(), b.double())
        want = want if act_in else F.hardswish(want)
        _close(y, want, torch.float32, f"linear_act act_in={act_in}")
        assert y.isnan().any(-1).tolist() == [i == 5 for i in range(37)]
