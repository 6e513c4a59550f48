"""armour_kernels::dense_mlp, the MLP as one dense-op call (the hidden rows of each row block kept in
cache, docs/dense.md): against the float64 definition and bit for bit against two dense calls on every
dispatch path this CPU supports, with and without the input LayerNorm, bias, residual; few rows
(two calls), odd shapes, bad arguments; mlp() on packed weights uses it, also under torch.compile."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from armour_kernels import cpu
from armour_kernels.constants import Activation
from armour_kernels.ops.linear_act import dense, dense_pack, mlp

from dense_cases import expected, make
from helpers import assert_close, results_on_threads

pytestmark = pytest.mark.skipif(not cpu.has_op("dense_mlp"), reason="the C++ extension is not built")

OP = torch.ops.armour_kernels.dense_mlp


def mlp_case(M, K, H, N, dtype, seed=0):
    x, w1, b1, r = make(M, K, H, dtype, seed=seed)
    _, w2, b2, _ = make(1, H, N, dtype, seed=seed + 1)
    r = torch.randn(M, N, generator=torch.Generator().manual_seed(seed)).to(dtype)
    g = torch.Generator().manual_seed(seed + 2)
    norm = ((1 + torch.randn(K, generator=g) / 4).to(dtype), torch.randn(K, generator=g).to(dtype), 1e-6)
    return x, (w1, b1), (w2, b2), r, norm


def fused(x, fc1, fc2, act, residual, norm):
    (w1, b1), (w2, b2) = fc1, fc2
    weight, bias, eps = norm if norm is not None else (None, None, None)
    return OP(x, dense_pack(w1), b1, int(Activation[act.upper()]), w1.shape[0], dense_pack(w2), b2, w2.shape[0],
              residual, weight, bias, eps)


def two_calls(x, fc1, fc2, act, residual, norm):
    (w1, b1), (w2, b2) = fc1, fc2
    hidden = dense(x, dense_pack(w1), b1, w1.shape[0], act=act, norm=norm)
    return dense(hidden, dense_pack(w2), b2, w2.shape[0], residual=residual)


def definition(x, fc1, fc2, act, residual, norm):
    """float64, with the hidden activation (and a LayerNorm's output) rounded to x's dtype as a model has them."""
    (w1, b1), (w2, b2) = fc1, fc2
    if norm is not None:
        weight, bias, eps = norm
        x = F.layer_norm(x.double(), (x.shape[-1],), weight.double(), bias.double(), eps).to(x.dtype)
    hidden = expected(x, w1, b1, act, False, None).to(x.dtype)
    return expected(hidden, w2, b2, "none", False, residual)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("M,K,H,N", [(197, 192, 768, 192), (196, 128, 256, 128), (64, 64, 100, 70), (300, 48, 64, 48)])
@pytest.mark.parametrize("act,with_norm,with_residual", [("gelu", True, True), ("hardswish", False, True),
                                                         ("none", False, False)])
def test_against_definition_and_two_calls(isa, dtype, M, K, H, N, act, with_norm, with_residual):
    x, fc1, fc2, r, norm = mlp_case(M, K, H, N, dtype, seed=M + H)
    norm = norm if with_norm else None
    r = r if with_residual else None
    y = fused(x, fc1, fc2, act, r, norm)
    assert y.shape == (M, N) and y.dtype == dtype
    assert torch.equal(y, two_calls(x, fc1, fc2, act, r, norm)), f"{isa}: not the two dense calls' result"
    assert_close(y, definition(x, fc1, fc2, act, r, norm), dtype, scale=2.0, msg=isa)


@pytest.mark.parametrize("M", [0, 1, 16, 40, 196, 197])
def test_few_rows_and_threads(M):
    """Fewer row blocks than threads: the two calls (column-split); more (196 rows: 4 tasks of 49 on 2
    threads) the fused op, rows cut evenly — the same results as on one thread either way."""
    x, fc1, fc2, r, norm = mlp_case(M, 32, 64, 48, torch.float32)
    outs = results_on_threads((1, 2), lambda: fused(x.reshape(1, M, 32), fc1, fc2, "relu", r.reshape(1, M, 48), norm))
    assert outs[0].shape == (1, M, 48)
    assert torch.equal(outs[0], outs[1])
    if M:
        assert_close(outs[0][0], definition(x, fc1, fc2, "relu", r, norm), torch.float32)


def test_plain_and_float64_weights():
    x, fc1, fc2, r, norm = mlp_case(70, 32, 64, 40, torch.float64)
    y = fused(x, fc1, fc2, "gelu", r, norm)
    assert_close(y, definition(x, fc1, fc2, "gelu", r, norm), torch.float64)


def test_bad_arguments():
    x, (w1, b1), (w2, b2), r, norm = mlp_case(128, 32, 64, 48, torch.float32)
    p1, p2 = dense_pack(w1), dense_pack(w2)
    with pytest.raises(RuntimeError, match="does not match the weight"):
        OP(x, p1, b1, 0, 64, dense_pack(w2[:, :60]), b2, 48, None, None, None, None)
    with pytest.raises(RuntimeError, match="bias must be"):
        OP(x, p1, b1, 0, 64, p2, b2[:47], 48, None, None, None, None)
    with pytest.raises(RuntimeError, match="residual must have"):
        OP(x, p1, b1, 0, 64, p2, b2, 48, r[:, :47], None, None, None)
    with pytest.raises(RuntimeError, match="unknown activation"):
        OP(x, p1, b1, 99, 64, p2, b2, 48, None, None, None, None)
    with pytest.raises(RuntimeError, match="inference-only"):
        OP(x.clone().requires_grad_(), p1, b1, 0, 64, p2, b2, 48, None, None, None, None)


def test_mlp_on_packed_weights_is_one_call_also_compiled():
    """mlp() with packed weights runs dense_mlp (one op in the profile), eagerly and under torch.compile."""
    from torch.profiler import ProfilerActivity, profile

    x, fc1, fc2, r, norm = mlp_case(197, 64, 128, 64, torch.float32)
    packed = (dense_pack(fc1[0]), dense_pack(fc2[0]))

    def f(x):
        return mlp(x, fc1, fc2, act="gelu", residual=x, packed=packed, norm=norm)

    want = definition(x, fc1, fc2, "gelu", x, norm)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    with torch.no_grad():
        compiled(x)  # compiles (its fake calls are not counted below)
    for run in (f, compiled):
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            y = run(x)
        assert_close(y, want, torch.float32)
        calls = {e.key: e.count for e in prof.key_averages()}
        assert calls.get("armour_kernels::dense_mlp") == 1 and "armour_kernels::dense" not in calls, calls
