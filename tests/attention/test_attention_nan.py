"""NaN and inf in, NaN out: the attention op on every backend, and on every CPU dispatch path,
against PyTorch's scaled_dot_product_attention (its math backend, in float64) on the same inputs.

docs/numerics.md: a NaN score anywhere in a query row (NaN in q, k or the bias, a +inf score, +inf
- inf) makes that row's output, lse and gradients NaN, exactly where SDPA's are; NaN in a value
row reaches every output through P·V (0 · NaN is NaN, also in a fully masked row); only a row
whose every score is -inf is fully masked (output 0, lse +inf, no gradient). The NaN positions
must be equal and every other element within the dtype's tolerance. (SDPA's default CPU kernel,
the flash one, returns numbers for a NaN query row: the math backend is the definition.)
"""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import python_ref
from python_ref.attention import attention_probs
from armour_kernels import attention
from helpers import assert_same_nans_and_close, backend_dtype_params, device_for

# NumPy (the Triton interpreter) warns about the NaN it is asked to make
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

NAN, INF = float("nan"), float("inf")
RES = 5                      # a LeViT grid of RES × RES tokens: N = 25, table of 25 entries per head
N, B, H, DK, DV = RES * RES, 2, 2, 16, 24
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ----------------------------------------------------------------------------- cases

def _poison_masked_rows(t):
    t["bias"][:, 5] = -INF         # fully masked row, both heads
    t["bias"][0, 8] = -INF         # fully masked row, head 0


def _nan_row_and_masked_rows(t):
    _poison_masked_rows(t)
    t["q"][1, 12, 1, 0] = NAN      # one NaN row (batch 1, head 1) beside the masked ones


def _masked_rows_and_nan_value(t):
    _poison_masked_rows(t)
    t["v"][0, 9, 1, 4] = NAN       # the masked rows' 0 · V has a NaN in column 4 of head 1


def _at(name, index, x):
    def poison(t):
        t[name][index] = x
    return poison


# name → (bias form, what to poison); every case is checked forward and backward.
CASES = {
    "nan_q": ("dense", _at("q", (0, 3, 1, 5), NAN)),
    "nan_k": ("dense", _at("k", (1, 7, 0, 2), NAN)),
    "nan_v": ("dense", _at("v", (0, 9, 1, 4), NAN)),
    "nan_bias": ("dense", _at("bias", (1, 4, 11), NAN)),
    "nan_table": ("table", _at("bias", (0, 6), NAN)),
    "nan_row_and_masked_rows": ("dense", _nan_row_and_masked_rows),
    "masked_rows_and_nan_v": ("dense", _masked_rows_and_nan_value),
    "inf_q": ("dense", _at("q", (0, 3, 1, 5), INF)),
    "neg_inf_k": ("dense", _at("k", (1, 7, 0, 2), -INF)),
    "inf_bias": ("dense", _at("bias", (1, 4, 11), INF)),
    "inf_table": ("table", _at("bias", (1, 3), INF)),
}


def make_inputs(case, dtype, device="cpu", n=N, value="v"):
    """Leaves q, k, v (B, N, H, D) and the bias (dense (H, N, N), or the LeViT table (H, R) with its
    index), poisoned as the case says, in `dtype`."""
    form, poison = CASES[case] if isinstance(case, str) else case
    gen = torch.Generator().manual_seed(0)
    t = {"q": torch.randn(B, n, H, DK, generator=gen), "k": torch.randn(B, n, H, DK, generator=gen),
         "v": torch.randn(B, n, H, DV, generator=gen)}
    index = None
    if form == "table":
        index = python_ref.levit_bias_index(RES)
        t["bias"] = torch.randn(H, int(index.max()) + 1, generator=gen)
        index = index.to(device)
    else:
        t["bias"] = torch.randn(H, n, n, generator=gen)
    poison(t)
    return {name: x.to(device, dtype).requires_grad_() for name, x in t.items()}, index


# ----------------------------------------------------------------------------- the oracle

def heads_first(t):
    return t.transpose(1, 2)


def sdpa_reference(q, k, v, bias, value="v", mask_diagonal=False):
    """Output (B, N, H, Dv) through SDPA's math backend ((B, N, H, D) float64 inputs; python_ref for
    the diagonal mask, which SDPA has no form of)."""
    q, k, v = heads_first(q), heads_first(k), heads_first(v)
    if mask_diagonal:
        out = python_ref.attention(q, k, v, value=value, bias=bias, mask_diagonal=True)
    else:
        with sdpa_kernel(SDPBackend.MATH):
            out = F.scaled_dot_product_attention(q, k, python_ref.value_tensor(q, k, v, value), attn_mask=bias)
    return heads_first(out)


def check_case(backend, dtype, case, n=N, value="v", mask_diagonal=False):
    """Forward and every gradient through the op on `backend` against the SDPA math reference (with
    mask_diagonal the key is the query, shared_qk_nodiag); on the cpu backend the saved lse too."""
    leaves, index = make_inputs(case, dtype, device_for(backend), n=n)
    if mask_diagonal:
        del leaves["k"]
    if value == "q+v":  # LeViT armour: the value is [q | v]
        leaves["v"] = leaves["v"].detach()[..., :DK].clone().requires_grad_()
    ref = {name: x.detach().cpu().double().requires_grad_() for name, x in leaves.items()}

    def args(t, idx):
        k = t["q"] if mask_diagonal else t["k"]
        bias = t["bias"] if idx is None else python_ref.levit_bias(t["bias"], idx.cpu())
        return t["q"], k, t["v"], bias

    q, k, v, _ = args(leaves, None)
    out = attention(q, k, v, value=value, bias=leaves["bias"], bias_index=index, mask_diagonal=mask_diagonal,
                    backend=backend)
    expected = sdpa_reference(*args(ref, index), value=value, mask_diagonal=mask_diagonal)
    assert_same_nans_and_close(out, expected, dtype, "out")
    if backend == "cpu":
        check_lse(q, k, v, leaves["bias"], index, ref, value, mask_diagonal)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, dtype)
    grads = torch.autograd.grad(out, list(leaves.values()), dout)
    want = torch.autograd.grad(expected, list(ref.values()), dout.double())
    for name, got, ref_grad in zip(leaves, grads, want):
        if mask_diagonal and name == "bias":
            # The masked diagonal's own bias entry: python_ref's mask is a fill (gradient exactly 0),
            # the kernels' a -inf score (gradient 0 · (dP - δ), NaN in a NaN row, as for a -inf bias).
            # No model has both a bias and the diagonal mask; compared off the diagonal only.
            off = ~torch.eye(n, dtype=torch.bool)
            got, ref_grad = got[..., off], ref_grad[..., off]
        assert_same_nans_and_close(got, ref_grad, dtype, f"grad {name}", scale=2.0)
    return out


def check_lse(q, k, v, bias, index, ref, value, mask_diagonal):
    """The C++ kernels' saved lse: NaN exactly in the rows whose softmax weights are NaN (a NaN or
    +inf score: log-sum-exp itself would say +inf for the latter, which the backward would take for a
    masked row), +inf for a fully masked row."""
    from armour_kernels.cpu.attention import attention_forward
    _, lse = attention_forward(q.detach(), k.detach(), v.detach(), bias.detach(), index, value=value, scale=None,
                               mask_diagonal=mask_diagonal)
    rq = heads_first(ref["q"]).detach()
    rk = rq if mask_diagonal else heads_first(ref["k"]).detach()
    rbias = ref["bias"] if index is None else python_ref.levit_bias(ref["bias"], index.cpu())
    scores = python_ref.attention_scores(rq, rk, bias=rbias.detach(), mask_diagonal=mask_diagonal)
    nan_rows = attention_probs(scores).isnan().any(-1)
    assert torch.equal(lse.isnan(), nan_rows), "lse: NaN rows differ"
    masked = (scores == -INF).all(-1)
    assert (lse[masked] == INF).all(), "lse: a fully masked row's lse is not +inf"


# ----------------------------------------------------------------------------- every backend

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.float32]))
def test_nan_and_inf_follow_sdpa(backend, dtype, case):
    check_case(backend, dtype, case)


@pytest.mark.parametrize("case", ["nan_q", "nan_table", "masked_rows_and_nan_v", "inf_bias"])
@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.float16, torch.bfloat16]))
def test_nan_and_inf_in_half_precision(backend, dtype, case):
    check_case(backend, dtype, case)


@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.float32]))
def test_one_nan_query_row_is_nan_and_masked_rows_stay_zero(backend, dtype):
    out = check_case(backend, dtype, "nan_row_and_masked_rows")
    nan_rows = out.isnan().any(-1)
    assert nan_rows.sum() == 1 and nan_rows[1, 12, 1]            # only the poisoned row
    assert (out[:, 5] == 0).all() and (out[:, 8, 0] == 0).all()  # fully masked rows: 0, not NaN


@pytest.mark.parametrize("backend, dtype", backend_dtype_params([torch.float32]))
def test_levit_armour_value_with_a_nan_query(backend, dtype):
    """LeViT `armour` (value = [q | v]) through the table: a NaN query element reaches its own row
    through the scores and every row through the value."""
    check_case(backend, dtype, ("table", _at("q", (0, 3, 1, 5), NAN)), value="q+v")


# ----------------------------------------------------------------------------- every CPU dispatch path

def _long_rows(t):
    """N > 256 keys: the kernels' online softmax runs over two key tiles."""
    bias = t["bias"]
    bias[0, 3, :256] = NAN                          # first tile all NaN, second finite
    bias[0, 7, :256] = -INF                         # first tile masked, a NaN in the second
    bias[0, 7, 258] = NAN
    bias[1, 9] = -INF                               # masked in both tiles
    bias[1, 11, :256] = -INF                        # partly masked: an ordinary row
    bias[1, 20, 259] = NAN                          # a NaN in the second tile only
    t["k"][1, 257, 1, 3] = NAN                      # a NaN key in the second tile: all of (b 1, h 1)


def _diagonal_rows(t):
    """mask_diagonal: rows 4 and 6 have no key but their diagonal (the paper's rule keeps it); row 4's
    diagonal score is NaN, so it is NaN as its softmax; a NaN value row reaches row 6 through 0 · V."""
    bias = t["bias"]
    bias[:, 4] = -INF
    bias[:, 4, 4] = NAN
    bias[:, 6] = -INF
    bias[:, 6, 6] = 0.5
    t["v"][1, 2, 0, 7] = NAN


CPU_CASES = ["nan_q", "nan_k", "nan_v", "nan_table", "nan_row_and_masked_rows", "masked_rows_and_nan_v", "inf_bias"]
CPU_DTYPES = [torch.float32, torch.bfloat16]  # float16 runs the float32 kernels (test_nan_and_inf_in_half_precision)

cpu = pytest.importorskip("armour_kernels.cpu")
ISAS = cpu.supported_isas() if cpu.has_op("attention") else []
# One path per kind of vector code and GEMM: scalar, the widest hand-written, oneDNN's fp32 brgemm, AMX.
GEMM_PATHS = [i for i in ISAS if i == "scalar"] + [i for i in ("avx512bf16", "avx512", "avx2") if i in ISAS][:1] + \
    [i for i in ISAS if i.endswith("+brgemm")][-1:] + [i for i in ISAS if i == "amx"]
NOT_BUILT = [pytest.param(None, marks=pytest.mark.skip(reason="armour_kernels._C is not built"))]


@pytest.fixture(params=ISAS or NOT_BUILT)
def isa(request):
    with cpu.use_isa(request.param):
        yield request.param


@pytest.fixture(params=GEMM_PATHS or NOT_BUILT)
def gemm_path(request):
    with cpu.use_isa(request.param):
        yield request.param


@pytest.mark.cpu_kernels
@pytest.mark.parametrize("case", CPU_CASES)
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["float32", "bfloat16"])
def test_every_cpu_path(isa, dtype, case):
    check_case("cpu", dtype, case)


@pytest.mark.cpu_kernels
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["float32", "bfloat16"])
def test_cpu_paths_over_two_key_tiles(gemm_path, dtype):
    check_case("cpu", dtype, ("dense", _long_rows), n=260)


@pytest.mark.cpu_kernels
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["float32", "bfloat16"])
def test_every_cpu_path_diagonal_only_rows(isa, dtype):
    check_case("cpu", dtype, ("dense", _diagonal_rows), mask_diagonal=True, value="q+v")
