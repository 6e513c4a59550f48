"""CPU attention launchers (armour_kernels.cpu.attention) against python_ref in float64.

Every dispatch path the CPU supports runs in this one process (`armour_kernels.cpu.use_isa`):
the hand-written kernels of each ISA (scalar, AVX2, AVX-512, AVX512-BF16), the same with the fp32
products on oneDNN's brgemm ("+brgemm"), and "amx" (bf16 products on AMX tiles). Gradients are
checked against torch.autograd through python_ref.attention, including the bias gradient (dense
and LeViT table), and with torch.autograd.gradcheck in float64. Fully masked rows, empty inputs
and the work split over threads (a (b, h) pair cut between two tasks) have their own tests.
"""
import math

import pytest
import torch

from helpers import assert_close
from python_ref.attention import attention, attention_lse, attention_scores, levit_bias, levit_bias_index, value_tensor

cpu = pytest.importorskip("armour_kernels.cpu")
if not cpu.has_op("attention"):
    pytest.skip("armour_kernels._C is not built", allow_module_level=True)
from armour_kernels.cpu.attention import attention_backward, attention_forward  # noqa: E402

ISAS = cpu.supported_isas()
FAST_ISAS = [i for i in ISAS if i != "scalar"] or ISAS
# One path per kind of GEMM: the hand-written ones, oneDNN's fp32 brgemm, AMX (where present).
GEMM_PATHS = [i for i in ("avx512bf16", "avx512", "avx2", "scalar") if i in ISAS][:1] + \
    [i for i in ISAS if i.endswith("+brgemm")][-1:] + [i for i in ISAS if i == "amx"]
VALUES = ("v", "q", "k", "q+v", "q+k")


@pytest.fixture(params=ISAS)
def isa(request):
    with cpu.use_isa(request.param):
        yield request.param


@pytest.fixture(params=FAST_ISAS)
def fast_isa(request):
    with cpu.use_isa(request.param):
        yield request.param


def make(shape, dtype, layout="contiguous"):
    """A random (B, N, H, D) tensor in `dtype`, laid out as asked (its values are what counts)."""
    B, N, H, D = shape
    if layout == "contiguous":
        return torch.randn(B, N, H, D).to(dtype)
    if layout == "packed":  # a slice of a LeViT-style per-head interleaved projection output
        return torch.randn(B, N, H, 3 * D).to(dtype)[..., D:2 * D]
    if layout == "heads_first":  # (B, H, N, D) memory, read as (B, N, H, D)
        return torch.randn(B, H, N, D).to(dtype).transpose(1, 2)
    if layout == "strided_d":  # feature stride 2
        return torch.randn(B, N, H, 2 * D).to(dtype)[..., ::2]
    raise ValueError(layout)


def reference(q, k, v, bias, table, index, value, scale, mask_diagonal, dout):
    """Output, lse and gradients of python_ref.attention in float64 (layout (B, N, H, D))."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (q, k, v, bias, table)]
    q64, k64, v64, bias64, table64 = leaves
    if table64 is not None:
        bias_eff = levit_bias(table64, index)
    else:
        bias_eff = bias64
    tr = lambda t: None if t is None else t.transpose(1, 2)  # noqa: E731
    out = attention(tr(q64), tr(k64), tr(v64), value=value, scale=scale, bias=bias_eff, mask_diagonal=mask_diagonal)
    lse = attention_lse(tr(q64), tr(k64), scale=scale, bias=bias_eff, mask_diagonal=mask_diagonal)
    out = out.transpose(1, 2)
    out.backward(dout.double())
    grads = [t.grad if t is not None else None for t in leaves]
    return out.detach(), lse.detach(), grads


def check(q, k, v, *, value, bias=None, table=None, index=None, scale=None, mask_diagonal=False, msg=""):
    """Forward and backward of the launchers vs the float64 reference."""
    dtype = q.dtype
    B, Nq, H, _ = q.shape
    dv_total = sum({"q": q.shape[-1], "k": k.shape[-1], "v": 0 if v is None else v.shape[-1]}[p]
                   for p in value.split("+"))
    dout = torch.randn(B, Nq, H, dv_total).to(dtype)
    ref_out, ref_lse, (gq, gk, gv, gbias, gtable) = reference(q, k, v, bias, table, index, value, scale,
                                                             mask_diagonal, dout)
    kbias = table if table is not None else bias
    out, lse = attention_forward(q, k, v, kbias, index, value=value, scale=scale, mask_diagonal=mask_diagonal)
    assert out.shape == (B, Nq, H, dv_total) and out.dtype == dtype and out.is_contiguous()
    assert lse.shape == (B, H, Nq)
    assert_close(out, ref_out, dtype, msg=f"{msg} out")
    assert_close(lse, ref_lse, dtype, msg=f"{msg} lse")
    need_dbias = kbias is not None
    dq, dk, dv, dbias = attention_backward(dout, q, k, v, kbias, index, out, lse, value=value, scale=scale,
                                           mask_diagonal=mask_diagonal, need_dbias=need_dbias)
    assert_close(dq, gq, dtype, msg=f"{msg} dq")
    assert_close(dk, gk, dtype, msg=f"{msg} dk")
    if "v" in value:
        assert dv.shape == v.shape
        assert_close(dv, gv, dtype, msg=f"{msg} dv")
    else:
        assert dv is None
    if kbias is not None:  # the accumulation type: the op casts it to the bias dtype
        assert dbias.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if table is not None:
        assert dbias.shape == table.shape
        assert_close(dbias, gtable, dtype, msg=f"{msg} dtable")
    elif bias is not None:
        assert dbias.shape == (B, H, Nq, k.shape[1])
        assert_close(dbias.sum_to_size(bias.shape), gbias, dtype, msg=f"{msg} dbias")
    else:
        assert dbias is None


def qkv(B, Nq, Nk, H, Dk, Dv, dtype, layout="contiguous"):
    return make((B, Nq, H, Dk), dtype, layout), make((B, Nk, H, Dk), dtype, layout), make((B, Nk, H, Dv), dtype, layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_diagonal", [False, True])
@pytest.mark.parametrize("value", VALUES)
def test_value_sources(isa, value, mask_diagonal, dtype):
    q, k, v = qkv(1, 197, 197, 2, 32, 16, dtype)
    check(q, k, v, value=value, mask_diagonal=mask_diagonal, msg=f"{isa} {value} {dtype}")


@pytest.mark.parametrize("d", [16, 32, 64])
@pytest.mark.parametrize("n", [1, 7, 197, 260])
@pytest.mark.parametrize("value", ["v", "q+v"])
def test_shapes(isa, value, n, d):
    q, k, v = qkv(1, n, n, 2, d, d + 8 if d < 64 else 24, torch.float32)  # Dv ≠ Dk
    check(q, k, v, value=value, msg=f"{isa} n={n} d={d}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_odd_head_dims(isa, dtype):
    """Dk and Dv not multiples of the vector width nor even (bf16 dot products pair features)."""
    q, k, v = qkv(2, 33, 33, 2, 15, 9, dtype)
    check(q, k, v, value="q+v", mask_diagonal=True, msg=f"{isa} odd dims")
    check(q, k, v, value="v", msg=f"{isa} odd dims v")


@pytest.mark.parametrize("value", ["v", "q", "q+v", "q+k"])
@pytest.mark.parametrize("form", ["full", "broadcast_b", "broadcast_bh_row", "table"])
def test_bias_forms(fast_isa, form, value):
    B, N, H, D = 2, 49, 3, 16
    q, k, v = qkv(B, N, N, H, D, 2 * D, torch.float32)
    if form == "table":
        index = levit_bias_index(7)
        table = torch.randn(H, int(index.max()) + 1)
        check(q, k, v, value=value, table=table, index=index, msg=form)
        return
    bias = {"full": torch.randn(B, H, N, N), "broadcast_b": torch.randn(H, N, N),
            "broadcast_bh_row": torch.randn(1, 1, 1, N)}[form]
    check(q, k, v, value=value, bias=bias.expand(B, H, N, N), msg=form)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_levit_subsample_nq_ne_nk(fast_isa, dtype):
    """LeViT AttentionDownsample: queries on the stride-2 grid, keys on the full grid, table bias."""
    B, H, D = 2, 4, 16
    index = levit_bias_index(14, stride=2)  # (49, 196)
    q, k, v = qkv(B, 49, 196, H, D, 4 * D, dtype)
    table = torch.randn(H, 196).to(dtype)
    check(q, k, v, value="v", table=table, index=index, msg="subsample")


@pytest.mark.parametrize("nq,nk", [(7, 260), (260, 7), (3, 1)])
def test_nq_ne_nk_dense_bias_and_diagonal(fast_isa, nq, nk):
    q, k, v = qkv(2, nq, nk, 2, 32, 16, torch.float32)
    bias = torch.randn(2, 2, nq, nk)
    check(q, k, v, value="v", bias=bias, mask_diagonal=True, msg=f"{nq}x{nk}")
    check(q, k, v, value="k", mask_diagonal=False, msg=f"{nq}x{nk} k")


@pytest.mark.parametrize("layout", ["packed", "heads_first", "strided_d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous(fast_isa, layout, dtype):
    q, k, v = qkv(2, 65, 65, 3, 32, 32, dtype, layout)
    assert not q.is_contiguous()
    check(q, k, v, value="q+v", mask_diagonal=True, msg=layout)


def test_diagonal_only_rows(isa):
    """mask_diagonal: a row with no finite key but its diagonal keeps it (N = 1; a -inf bias)."""
    q, k, v = qkv(2, 1, 1, 2, 16, 16, torch.float32)
    check(q, k, v, value="q", mask_diagonal=True, msg="N=1")
    N = 9
    q, k, v = qkv(1, N, N, 2, 16, 8, torch.float32)
    bias = torch.randn(1, 2, N, N)
    bias[:, :, 3, :] = float("-inf")  # row 3: only its diagonal survives the mask rule
    bias[:, :, 3, 3] = 0.5
    check(q, k, v, value="q+v", bias=bias, mask_diagonal=True, msg="-inf row")


def test_explicit_scale_and_fp64(isa):
    q, k, v = qkv(2, 33, 33, 2, 16, 24, torch.float64)
    check(q, k, v, value="q+v", scale=0.3, mask_diagonal=True, msg="fp64")


def test_fp64_bias_gradients_at_fp64_accuracy():
    """float64 inputs: dense and table bias gradients are computed and returned in float64."""
    q, k, v = qkv(2, 33, 33, 2, 16, 24, torch.float64)
    check(q, k, v, value="q+v", bias=torch.randn(2, 2, 33, 33, dtype=torch.float64), msg="fp64 dense")
    index = levit_bias_index(7)
    q, k, v = qkv(2, 49, 49, 2, 16, 16, torch.float64)
    check(q, k, v, value="v", table=torch.randn(2, 49, dtype=torch.float64), index=index, msg="fp64 table")


@pytest.mark.parametrize("d", [128, 256])
def test_wide_heads(d):
    """Head dims past 64 (up to the op's 256), over several key tiles, on every kind of GEMM."""
    for path in GEMM_PATHS:
        with cpu.use_isa(path):
            for dtype in (torch.float32, torch.bfloat16):
                q, k, v = qkv(1, 300, 300, 1, d, d // 2, dtype)
                check(q, k, v, value="q+v", msg=f"{path} d={d} {dtype}")


# ----------------------------------------------------------------------------- fully masked rows

def masked_reference(q, k, v, bias, value, scale, mask_diagonal, dout):
    """The float64 reference with the fully masked row rule (docs/numerics.md): a row whose every
    score is -inf has output 0, lse +inf, and adds nothing to any gradient."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (q, k, v, bias)]
    q64, k64, v64, b64 = leaves
    tr = lambda t: None if t is None else t.transpose(1, 2)  # noqa: E731
    scores = attention_scores(tr(q64), tr(k64), scale=scale, bias=b64, mask_diagonal=mask_diagonal)
    dead = torch.isneginf(scores).all(-1, keepdim=True)
    p = torch.softmax(scores.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0)
    out = (p @ value_tensor(tr(q64), tr(k64), tr(v64), value)).transpose(1, 2)
    lse = torch.logsumexp(scores, -1).masked_fill(dead[..., 0], float("inf"))
    out.backward(dout.double())
    return out.detach(), lse.detach(), [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("mask_diagonal", [False, True])
@pytest.mark.parametrize("value", ["v", "q+v"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_rows(isa, dtype, value, mask_diagonal):
    """Rows masked out entirely through the bias give 0 and no gradient; partly masked rows and
    every other gradient entry stay finite and correct (a masked row once made dk / dv NaN)."""
    B, N, H = 2, 37, 2
    q, k, v = qkv(B, N, N, H, 16, 8, dtype)
    bias = torch.randn(B, H, N, N)
    bias[0, 0, 3] = float("-inf")                 # fully masked
    bias[1, :, 20:23] = float("-inf")             # three in every head
    bias[:, 1, :, 5:30] = float("-inf")           # partly masked rows
    bias[0, 1, 7, :] = float("-inf")
    bias[0, 1, 7, 7] = 0.3                        # diagonal-only under mask_diagonal, else one key
    scale = 0.25
    dout = torch.randn(B, N, H, {"v": 8, "q+v": 24}[value]).to(dtype)
    ref_out, ref_lse, (gq, gk, gv, gb) = masked_reference(q, k, v, bias, value, scale, mask_diagonal, dout)
    out, lse = attention_forward(q, k, v, bias, None, value=value, scale=scale, mask_diagonal=mask_diagonal)
    assert_close(out, ref_out, dtype, msg=f"{isa} out")
    assert (out[0, 3, 0] == 0).all() and (out[1, 20:23] == 0).all()
    dead = torch.isinf(ref_lse)
    assert torch.isinf(lse[dead]).all() and (lse[dead] > 0).all()
    assert_close(lse[~dead], ref_lse[~dead], dtype, msg=f"{isa} lse")
    dq, dk, dv, dbias = attention_backward(dout, q, k, v, bias, None, out, lse, value=value, scale=scale,
                                           mask_diagonal=mask_diagonal, need_dbias=True)
    for name, got, want in (("dq", dq, gq), ("dk", dk, gk), ("dv", dv, gv), ("dbias", dbias, gb)):
        assert torch.isfinite(got).all(), f"{isa} {name} not finite"
        assert_close(got, want, dtype, msg=f"{isa} {name}")
    assert (dbias[0, 0, 3] == 0).all() and (dbias[1, :, 20:23] == 0).all()


def test_fully_masked_rows_of_a_table_bias():
    """A LeViT table with -inf entries: every (b, h) of a batch shares the masked positions."""
    B, H = 3, 2
    index = levit_bias_index(5)
    q, k, v = qkv(B, 25, 25, H, 16, 16, torch.float32)
    table = torch.randn(H, int(index.max()) + 1)
    table[0] = float("-inf")      # head 0: every score masked
    table[1, 3:9] = float("-inf")  # head 1: some relative offsets masked
    out, lse = attention_forward(q, k, v, table, index, value="v", scale=None, mask_diagonal=False)
    assert torch.isinf(lse[:, 0]).all() and (out[:, :, 0] == 0).all() and torch.isfinite(lse[:, 1]).all()
    dq, dk, dv, dtable = attention_backward(torch.randn_like(out), q, k, v, table, index, out, lse, value="v",
                                            scale=None, mask_diagonal=False, need_dbias=True)
    assert all(torch.isfinite(t).all() for t in (dq, dk, dv, dtable))
    assert (dtable[0] == 0).all() and (dtable[1, 3:9] == 0).all() and (dq[:, :, 0] == 0).all()
    assert (dk[:, :, 0] == 0).all() and (dv[:, :, 0] == 0).all() and (dtable[1] != 0).any()


# ----------------------------------------------------------------------------- empty inputs

@pytest.mark.parametrize("shape", [(0, 5, 5, 2), (2, 0, 5, 2), (2, 5, 0, 2), (2, 5, 5, 0)],
                         ids=["B=0", "Nq=0", "Nk=0", "H=0"])
@pytest.mark.parametrize("value", ["v", "q+v"])
def test_empty_inputs(shape, value):
    """Empty in, empty out; no keys: zeros, as SDPA (every row is fully masked)."""
    B, Nq, Nk, H = shape
    if "q" in value and Nq != Nk:
        pytest.skip("value q needs Nq = Nk")
    q, k, v = torch.randn(B, Nq, H, 16), torch.randn(B, Nk, H, 16), torch.randn(B, Nk, H, 8)
    bias = torch.randn(B, H, Nq, Nk)
    out, lse = attention_forward(q, k, v, bias, None, value=value, scale=None, mask_diagonal=True)
    dv_total = 8 if value == "v" else 24
    assert out.shape == (B, Nq, H, dv_total) and (out == 0).all() and lse.shape == (B, H, Nq)
    dq, dk, dv, dbias = attention_backward(torch.randn_like(out), q, k, v, bias, None, out, lse, value=value,
                                           scale=None, mask_diagonal=True, need_dbias=True)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape and dbias.shape == (B, H, Nq, Nk)
    assert all((t == 0).all() for t in (dq, dk, dv, dbias))
    table, index = torch.randn(H, 4), torch.zeros(Nq, Nk, dtype=torch.long)
    out, lse = attention_forward(q, k, v, table, index, value=value, scale=None, mask_diagonal=False)
    dtable = attention_backward(torch.randn_like(out), q, k, v, table, index, out, lse, value=value, scale=None,
                                mask_diagonal=False, need_dbias=True)[3]
    assert dtable.shape == table.shape and (dtable == 0).all()


# ----------------------------------------------------------------------------- threads

@pytest.mark.parametrize("threads", [1, 2, 3])
def test_work_split_over_threads(threads):
    """The rows of all (b, h) pairs are cut into one run per thread: at batch 1 a pair is shared by two
    tasks, whose key-side gradients (dk, dv, the value gradient routed to dq, the table gradient)
    are summed after the loop. Every path, several value sources and both bias forms."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        index = levit_bias_index(7)
        for path in GEMM_PATHS:
            with cpu.use_isa(path):
                for dtype in (torch.float32, torch.bfloat16):
                    q, k, v = qkv(1, 49, 49, 3, 16, 32, dtype)
                    table = torch.randn(3, 49)
                    check(q, k, v, value="q+v", table=table, index=index, msg=f"{path} {threads}t table")
                    check(q, k, v, value="q+k", bias=torch.randn(1, 3, 49, 49), mask_diagonal=True,
                          msg=f"{path} {threads}t dense")
                    q, k, v = qkv(1, 197, 197, 3, 64, 64, dtype, "packed")
                    check(q, k, v, value="q", msg=f"{path} {threads}t DeiT-Ti")
    finally:
        torch.set_num_threads(previous)


def test_float16_inputs_run_in_float32():
    q, k, v = qkv(1, 20, 20, 2, 16, 16, torch.float16)
    bias = torch.randn(1, 2, 20, 20).half()
    check(q, k, v, value="q+v", bias=bias, mask_diagonal=True, msg="fp16")


def test_bias_dtype_may_differ_from_inputs():
    """A float32 LeViT table (or dense bias) with bfloat16 activations, a float16 bias with float32."""
    q, k, v = qkv(1, 49, 49, 2, 16, 16, torch.bfloat16)
    index = levit_bias_index(7)
    check(q, k, v, value="v", table=torch.randn(2, 49), index=index, msg="fp32 table, bf16 q")
    q, k, v = qkv(1, 20, 20, 2, 16, 16, torch.float32)
    check(q, k, v, value="v", bias=torch.randn(1, 2, 20, 20).half(), msg="fp16 bias, fp32 q")


def test_all_isas_agree():
    q, k, v = qkv(2, 97, 97, 2, 32, 32, torch.float32)
    outs = []
    for name in ISAS:
        with cpu.use_isa(name):
            outs.append(attention_forward(q, k, v, None, None, value="q+v", scale=None, mask_diagonal=True)[0])
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-5, rtol=1e-5)


class _Attention(torch.autograd.Function):
    """The launchers as an autograd function, for gradcheck."""

    @staticmethod
    def forward(ctx, q, k, v, bias, index, value, mask_diagonal):
        out, lse = attention_forward(q, k, v, bias, index, value=value, scale=None, mask_diagonal=mask_diagonal)
        ctx.save_for_backward(q, k, v, bias, index, out, lse)
        ctx.args = (value, mask_diagonal)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias, index, out, lse = ctx.saved_tensors
        value, mask_diagonal = ctx.args
        dq, dk, dv, dbias = attention_backward(dout.contiguous(), q, k, v, bias, index, out, lse, value=value,
                                               scale=None, mask_diagonal=mask_diagonal,
                                               need_dbias=bias is not None and bias.requires_grad)
        return dq, dk, dv, None if dbias is None else dbias.to(bias.dtype), None, None, None


@pytest.mark.parametrize("value", VALUES)
def test_gradcheck_float64(value):
    B, N, H, D = 1, 6, 2, 4
    q, k, v = (torch.randn(B, N, H, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(B, H, N, N, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: _Attention.apply(*t, None, value, True), (q, k, v, bias))
    index = levit_bias_index(3)[:N, :N].contiguous()
    table = torch.randn(H, int(index.max()) + 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, t: _Attention.apply(q, k, v, t, index, value, False), (q, k, v, table))


def test_default_scale_is_inverse_sqrt_dk():
    q, k, v = qkv(1, 10, 10, 1, 16, 8, torch.float64)
    a, _ = attention_forward(q, k, v, None, None, value="v", scale=None, mask_diagonal=False)
    b, _ = attention_forward(q, k, v, None, None, value="v", scale=1 / math.sqrt(16), mask_diagonal=False)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case,error", [
    ("3d", "4-D"),
    ("dtype_mismatch", "dtype"),
    ("int", "float32, bfloat16 or float64"),
    ("q_value_nq_ne_nk", "as many queries as keys"),
    ("missing_v", "needs v"),
    ("bad_value", "value must be one of"),
    ("bad_bias_shape", "broadcast"),
    ("k_shape", "k must be"),
])
def test_bad_input_errors(case, error):
    q, k, v = qkv(1, 8, 8, 2, 16, 16, torch.float32)
    kw = dict(value="v", scale=None, mask_diagonal=False)
    bias = index = None
    if case == "3d":
        q = q[0]
    elif case == "dtype_mismatch":
        k = k.double()
    elif case == "int":
        q, k, v = q.int(), k.int(), v.int()
    elif case == "q_value_nq_ne_nk":
        q, kw["value"] = q[:, :4], "q"
    elif case == "missing_v":
        v = None
    elif case == "bad_value":
        kw["value"] = "x"
    elif case == "bad_bias_shape":
        bias = torch.randn(3, 8, 8)
    elif case == "k_shape":
        k = k[..., :8]
    with pytest.raises((RuntimeError, ValueError, TypeError), match=error):
        attention_forward(q, k, v, bias, index, **kw)


def test_wide_registers_only_in_isa_kernels():
    """One build runs on any x86-64: AVX (ymm/zmm) code may only live in the ISA namespaces that
    are called after a CPUID check, never in a function the baseline path could reach (an std
    inline function compiled under a target pragma and picked by the linker would be one)."""
    import re
    import shutil
    import subprocess

    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump not installed")
    asm = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", cpu._C.__file__], capture_output=True,
                         text=True, check=True).stdout
    offenders, current = set(), None
    for line in asm.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            current = header.group(1)
        elif current and ("%ymm" in line or "%zmm" in line) and not re.search(r"armour::(avx2|avx512|avx512bf16)::", current):
            offenders.add(current)
    assert not offenders, f"AVX registers outside the ISA kernels: {sorted(offenders)[:5]}"


def test_isa_selection():
    assert cpu.isa() in ISAS and "scalar" in ISAS
    with cpu.use_isa("scalar"):
        assert cpu.isa() == "scalar"
    with pytest.raises(RuntimeError, match="unknown ISA"):
        cpu.set_isa("sse9")
    with pytest.raises(RuntimeError, match="unknown ISA"):
        cpu.set_isa("scalar+amx")
    assert all(p.split("+")[0] in ("scalar", "avx2", "avx512", "avx512bf16", "amx") for p in ISAS)
    assert "scalar+brgemm" not in ISAS  # brgemm needs at least AVX2


def test_isa_environment_forces_the_path(tmp_path):
    """ARMOUR_KERNELS_CPU_ISA picks the path at import, e.g. to run a whole suite without brgemm."""
    import os
    import subprocess
    import sys
    for path in (ISAS[0], ISAS[-1]):
        env = {**os.environ, "ARMOUR_KERNELS_CPU_ISA": path}
        got = subprocess.run([sys.executable, "-c", "import armour_kernels.cpu as c; print(c.isa())"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        assert got == path
