"""The CPU serving dense op (armour_kernels::dense, docs/dense.md) against PyTorch's Linear + activation:
every dispatch path this CPU supports (each packs its own layout), every activation, input Hardswish,
bias, residual, odd shapes, non-contiguous inputs, NaN / inf, bad arguments, linear_act / mlp with
packed weights (.ci/sanitize runs this file; the op under torch.compile / torch.export is in
test_dense_compile.py)."""
from __future__ import annotations

import pytest
import torch

from armour_kernels import cpu
from armour_kernels.constants import ACTIVATIONS
from armour_kernels.ops.linear_act import dense, dense_pack, linear_act

from dense_cases import ISAS, expected, make
from helpers import assert_close, assert_same_nans_and_close, results_on_threads

pytestmark = pytest.mark.skipif(not cpu.has_op("dense"), reason="the C++ extension is not built")

DTYPES = (torch.float32, torch.bfloat16, torch.float64, torch.float16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activations(isa, dtype, act):
    x, w, b, r = make(70, 48, 96, dtype, residual=True)
    y = dense(x, dense_pack(w), b, 96, act=act, residual=r)
    assert y.dtype == dtype and y.shape == (70, 96)
    assert_close(y, expected(x, w, b, act, False, r), dtype, msg=f"{isa} {act}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", [(0, 16, 32), (1, 16, 16), (5, 16, 1), (197, 192, 576), (49, 256, 70),
                                   (16, 384, 768), (33, 33, 65), (130, 128, 128)])
@pytest.mark.parametrize("act_in,bias,residual", [(False, False, False), (True, True, True), (False, True, False)])
def test_shapes(isa, dtype, M, K, N, act_in, bias, residual):
    x, w, b, r = make(M, K, N, dtype, bias=bias, residual=residual, seed=M + K + N)
    y = dense(x, dense_pack(w), b, N, act="hardswish", act_in=act_in, residual=r)
    assert y.shape == (M, N)
    if M == 0:
        return
    assert_close(y, expected(x, w, b, "hardswish", act_in, r), dtype, msg=f"{isa} {M}x{K}x{N}")


def test_leading_dims_and_strides(isa):
    """x and residual (..., C) with any leading shape, non-contiguous rows, a transposed residual."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 64, 2, generator=g)[..., 0]  # column stride 2: copied to rows
    w = torch.randn(80, 64, generator=g) / 8
    b = torch.randn(80, generator=g)
    r = torch.randn(2, 80, 7, generator=g).transpose(1, 2)
    y = dense(x, dense_pack(w), b, 80, act="relu", act_in=True, residual=r)
    assert y.shape == (2, 7, 80)
    assert_close(y, expected(x, w, b, "relu", True, r), torch.float32)
    rows = torch.randn(3, 5, 200, generator=g)[:, :, 10:74]  # row stride 200: read in place
    assert_close(dense(rows, dense_pack(w), None, 80), expected(rows, w, None, "none", False, None), torch.float32)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_nan_and_inf(isa, dtype, act):
    """NaN in → NaN out in the rows (and only the rows) it reaches; ±inf as PyTorch gives them."""
    x, w, b, r = make(40, 32, 64, dtype, residual=True)
    x[3, 5] = float("nan")
    x[7, :] = 0
    x[7, 0] = float("inf")
    r[11, 2] = float("nan")
    r[12, 3] = float("-inf")
    y = dense(x, dense_pack(w), b, 64, act=act, residual=r)
    want = expected(x, w, b, act, False, r)
    if act in ("gelu", "hardswish", "silu", "gelu_tanh"):  # ±inf through these: NaN or ±inf by formula
        y, want = y[torch.arange(40) != 7], want[torch.arange(40) != 7]
        assert y.isnan().any()
    assert_same_nans_and_close(y, want, dtype, f"{isa} {act}")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("M,N", [(196, 384), (197, 192), (16, 192), (16, 384), (1, 1000), (49, 200), (3136, 128)])
def test_thread_splits(isa, dtype, M, N):
    """Rows and columns cut evenly among 2 and 3 threads (LeViT's 196 rows as 4 × 49, 384 columns as
    2 + 1 + 2 + 1 blocks, more row tasks where the columns alone leave the threads' shares uneven):
    every row and column computed once, and the same result as on one thread, bit for bit."""
    x, w, b, r = make(M, 64, N, dtype, residual=True, seed=M + N)
    packed = dense_pack(w)
    outs = results_on_threads((1, 2, 3), lambda: dense(x, packed, b, N, act="gelu", residual=r))
    assert_close(outs[0], expected(x, w, b, "gelu", False, r), dtype, msg=f"{isa} {M}x{N}")
    for threads, y in zip((2, 3), outs[1:]):
        assert torch.equal(y, outs[0]), f"{isa} {M}x{N}: {threads} threads differ from one"


def test_plain_weight_and_layouts():
    """A plain (out, in) weight is accepted on every path; dense_pack says which layout it chose."""
    x, w, b, r = make(9, 32, 40, torch.float32, residual=True)
    assert_close(dense(x, w, b, 40, residual=r), expected(x, w, b, "none", False, r), torch.float32)
    assert cpu._require().dense_layout(w) in ("fp32-brgemm", "plain")
    assert cpu._require().dense_layout(w.double()) == "plain"
    # odd `in`: no VNNI pairs for AMX; below AVX-512 bf16 blocks are widened to fp32, any `in`
    assert cpu._require().dense_layout(w[:, :31].bfloat16()) in ("plain", "bf16-fp32-brgemm")
    if "avx2+brgemm" in ISAS:
        with cpu.use_isa("avx2+brgemm"):
            assert cpu._require().dense_layout(w.bfloat16()) == "bf16-fp32-brgemm"


def test_bad_arguments():
    x, w, b, r = make(4, 32, 40, torch.float32, residual=True)
    p = dense_pack(w)
    with pytest.raises(RuntimeError, match="does not match the weight"):
        dense(x[:, :31], p, b, 40)
    with pytest.raises(RuntimeError, match="out_features"):
        dense(x, w, b, 41)
    with pytest.raises(RuntimeError, match="bias must be"):
        dense(x, p, b[:39], 40)
    with pytest.raises(TypeError, match="bias dtype"):
        dense(x, p, b.double(), 40)
    with pytest.raises(RuntimeError, match="residual must have the output's shape"):
        dense(x, p, b, 40, residual=r[:3])
    with pytest.raises(TypeError, match="weight dtype"):
        dense(x.double(), p, None, 40)
    with pytest.raises(ValueError, match="act must be one of"):
        dense(x, p, b, 40, act="tanh")
    with pytest.raises(RuntimeError, match="inference-only"):
        dense(x.requires_grad_(), p, b, 40)
    if "amx" in ISAS and len(ISAS) > 1:
        with cpu.use_isa("amx"):
            pb = dense_pack(w.bfloat16())
        assert pb.dim() == 4
        with cpu.use_isa(ISAS[0]), pytest.raises(RuntimeError, match="packed for AMX"):
            dense(x.detach().bfloat16(), pb, None, 40)


def test_linear_act_runs_dense_with_packed_weight():
    """linear_act with `packed=` in inference takes the dense op (plan "dense"); with a gradient wanted it
    computes with the plain weight (autograd)."""
    from armour_kernels.plan import linear_act_plan

    x, w, b, r = make(6, 32, 48, torch.float32, residual=True)
    p = dense_pack(w)
    assert linear_act_plan(x, w, b, act="hardswish", residual=r, packed=p).path == "dense"
    y = linear_act(x, w, b, act="hardswish", act_in=True, residual=r, packed=p)
    assert_close(y, expected(x, w, b, "hardswish", True, r), torch.float32)
    xg = x.clone().requires_grad_()
    assert linear_act_plan(xg, w, b, act="hardswish", packed=p).path != "dense"
    linear_act(xg, w, b, act="hardswish", packed=p).sum().backward()
    assert xg.grad is not None


def test_packed_mlp_in_row_chunks():
    """mlp() on packed weights cuts a large batch into row chunks (hidden activation kept a few MB): same result."""
    from armour_kernels.ops.linear_act import mlp

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2600, 32, generator=g)  # 5200 rows x 768 hidden fp32 = 16 MB: three chunks
    w1, b1 = torch.randn(768, 32, generator=g) / 6, torch.randn(768, generator=g)
    w2, b2 = torch.randn(32, 768, generator=g) / 28, torch.randn(32, generator=g)
    r = torch.randn(2, 2600, 32, generator=g)
    y = mlp(x, (w1, b1), (w2, b2), act="gelu", residual=r, packed=(dense_pack(w1), dense_pack(w2)))
    want = expected(expected(x, w1, b1, "gelu", False, None), w2, b2, "none", False, r)
    assert y.shape == x.shape
    assert_close(y, want, torch.float32)


def test_calls_above_a_row_limit_take_the_other_paths(monkeypatch):
    """A dtype given a DENSE_MAX_ROWS limit (none is set by default) sends larger calls to oneDNN, with the
    same result; without one the dense op takes every row count."""
    from armour_kernels import plan
    from armour_kernels.plan import linear_act_plan

    w0 = torch.randn(64, 32).bfloat16()
    assert linear_act_plan(torch.randn(4096, 32).bfloat16(), w0, packed=dense_pack(w0)).path == "dense"
    rows = 512
    monkeypatch.setitem(plan.DENSE_MAX_ROWS, torch.bfloat16, rows)
    w = torch.randn(64, 32).bfloat16()
    p = dense_pack(w)
    assert linear_act_plan(torch.randn(rows, 32).bfloat16(), w, packed=p).path == "dense"
    x = torch.randn(rows + 1, 32).bfloat16()
    assert linear_act_plan(x, w, packed=p).path != "dense"
    assert_close(linear_act(x, w, act="relu", packed=p), expected(x, w, None, "relu", False, None), torch.bfloat16)


def test_gelu_over_its_range(isa):
    """The epilogue's GELU (a rational erf on a clamped argument) against float64 GELU from -12 to 12,
    where erf saturates, and at ±inf / NaN: GELU(+inf) = +inf, GELU(-inf) and GELU(NaN) = NaN."""
    x = torch.cat([torch.linspace(-12, 12, 2001), torch.tensor([float("inf"), float("-inf"), float("nan")])])
    w = torch.ones(16, 1)  # K = 1: y[:, j] = x exactly, then the epilogue
    y = dense(x[:, None], dense_pack(w), None, 16, act="gelu")[:, 0]
    want = torch.nn.functional.gelu(x.double())
    # PyTorch's own float32 GELU is 8e-7 off float64 here (1 + erf cancels for x < -4): the same budget, twice
    torch.testing.assert_close(y[:-3].double(), want[:-3], atol=1.6e-6, rtol=1e-6)
    assert y[-3] == float("inf") and y[-2].isnan() and y[-1].isnan()


@pytest.mark.skipif(not cpu.built() or "amx" not in ISAS, reason="needs the amx dispatch path")
@pytest.mark.parametrize("M", [1, 5, 16, 17, 31, 32, 33, 197])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_amx_task_kernel_matches_brgemm_tiles(M, act):
    """The AMX task kernel (kernels/dense_amx.h: row blocks of 17–32 rows, the second row tile partial, the
    last weight block partial) writes what oneDNN's micro-kernel + the epilogue write, bit for bit, and both
    match the definition; row blocks of ≤ 16 rows and K not a multiple of 32 take the micro-kernel within
    the same call."""
    with cpu.use_isa("amx"):
        if not cpu.dense_task_available("amx"):
            pytest.skip("the AMX task kernel is not compiled in")
        for K, N, residual in ((64, 96, True), (192, 70, False), (32, 16, True), (48, 64, True)):
            x, w, b, r = make(M, K, N, torch.bfloat16, residual=residual, seed=M + K)
            packed = dense_pack(w)
            with cpu.use_dense_task("amx", True):
                y_task = dense(x, packed, b, N, act=act, residual=r)
            with cpu.use_dense_task("amx", False):
                y_tiles = dense(x, packed, b, N, act=act, residual=r)
            assert torch.equal(y_task, y_tiles), f"{M}x{K}x{N} {act}"
            assert_close(y_task, expected(x, w, b, act, False, r), torch.bfloat16, msg=f"{M}x{K}x{N} {act}")


def _f32_task_paths():
    return [name for name in ISAS if "/" not in name and _f32_task_runs(name)]


def _packs_bf16_blocks(name):
    with cpu.use_isa(name):
        return cpu._require().dense_layout(torch.ones(64, 64).bfloat16()) == "bf16-fp32-brgemm"


def _f32_task_runs(name):
    with cpu.use_isa(name):
        return cpu.dense_task_available("f32")


@pytest.mark.skipif(not cpu.built() or not _f32_task_paths(),
                    reason="needs an AVX2 or AVX-512 dispatch path with brgemm")
@pytest.mark.parametrize("M", [1, 5, 6, 7, 13, 16, 49, 64, 65, 197])
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_f32_task_kernel_matches_definition(M, act, dtype):
    """The fp32 task kernel (kernels/dense_f32.h: layers of ≤ 64 rows as passes of ≤ 6 rows, the reduction
    in chunks of 64 steps — 256 on AVX2, where a block is 4 passes wide — the last chunk and weight block
    partial, rows read with a stride) matches the definition and oneDNN's micro-kernel per tile to fp32
    rounding, on every AVX-512 and AVX2 path; on AVX-512 65 and 197 rows take oneDNN's tiles within the
    same op, on AVX2 the kernel serves each of their 64-row blocks. bf16: the weight packed in bf16
    blocks (where a path packs them: AVX2) and run on every path, which widens it as it reads it; the
    output is rounded to bf16 once, so the two agree to that rounding."""
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    packs_with = None  # bf16: the path whose dense_pack makes bf16 blocks
    if dtype == torch.bfloat16:
        packs_with = next((name for name in _f32_task_paths() if _packs_bf16_blocks(name)), None)
        if packs_with is None:
            pytest.skip("no dispatch path here packs bf16 blocks for widening")
    for name in _f32_task_paths():
        with cpu.use_isa(name):
            for K, N, residual in ((16, 16, False), (65, 70, True), (384, 200, True), (128, 64, False),
                                   (600, 130, False)):
                x, w, b, r = make(M, K + 3, N, dtype, residual=residual, seed=M + K)
                x = x[:, 1:K + 1]  # rows K + 3 apart
                w = w[:, 1:K + 1].contiguous()
                with cpu.use_isa(packs_with or name):
                    packed = dense_pack(w)
                with cpu.use_dense_task("f32", True):
                    y_task = dense(x, packed, b, N, act=act, residual=r)
                with cpu.use_dense_task("f32", False):
                    y_tiles = dense(x, packed, b, N, act=act, residual=r)
                msg = f"{name} {M}x{K}x{N} {act}"
                assert y_task.dtype == dtype, msg
                assert_close(y_task, expected(x, w, b, act, False, r), dtype, msg=msg)
                torch.testing.assert_close(y_task, y_tiles, **tol, msg=msg)


def test_dense_task_switch_names():
    """The task-kernel switches take the kinds they know and say which those are otherwise."""
    with pytest.raises(ValueError, match="unknown dense task kernel 'avx'"):
        cpu.dense_task_available("avx")
    with pytest.raises(ValueError, match="choose from"):
        cpu.use_dense_task("bf16", False)
    for kind in cpu.DENSE_TASKS:
        with cpu.use_dense_task(kind, False):
            with cpu.use_dense_task(kind, True):
                pass
