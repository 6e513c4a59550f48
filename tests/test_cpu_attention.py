"""CPU attention launchers (armour_kernels.cpu.attention) against python_ref in float64.

Every ISA path the CPU supports (scalar, AVX2, AVX-512) runs in this one process
(`armour_kernels.cpu.use_isa`). Gradients are checked against torch.autograd through
python_ref.attention, including the bias gradient (dense and LeViT table), and with
torch.autograd.gradcheck in float64.
"""
import math

import pytest
import torch

from conftest import assert_close
from python_ref.attention import attention, attention_lse, levit_bias, levit_bias_index

cpu = pytest.importorskip("armour_kernels.cpu")
if not cpu.has_op("attention"):
    pytest.skip("armour_kernels._C is not built", allow_module_level=True)
from armour_kernels.cpu.attention import attention_backward, attention_forward  # noqa: E402

ISAS = cpu.supported_isas()
FAST_ISAS = [i for i in ISAS if i != "scalar"] or ISAS
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
    if kbias is not None:
        assert dbias.dtype == torch.float32
    if table is not None:
        assert dbias.shape == table.shape
        assert_close(dbias, gtable, dtype if dtype != torch.float64 else torch.float32, msg=f"{msg} dtable")
    elif bias is not None:
        assert dbias.shape == (B, H, Nq, k.shape[1])
        assert_close(dbias.sum_to_size(bias.shape), gbias, dtype if dtype != torch.float64 else torch.float32,
                     msg=f"{msg} dbias")
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
    ("index_out_of_range", r"\[0, R="),
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
    elif case == "index_out_of_range":
        bias, index = torch.randn(2, 4), torch.full((8, 8), 4, dtype=torch.long)
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
