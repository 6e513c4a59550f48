"""Triton attention at its edges (interpreter on CPU): fully masked rows, broadcast-bias and table
gradients (atomic and deterministic paths), the narrowed LeViT index, the fp32 dot precision.

docs/numerics.md: a query row whose every score is -inf outputs 0 and contributes no gradient;
every other number is unchanged and finite. The float64 reference here is python_ref on the same
inputs with such rows given a finite bias and their output zeroed (python_ref itself gives NaN).
"""
import pytest
import torch

import python_ref
from armour_kernels import attention
from armour_kernels.triton import attention as ta
from conftest import HAS_CUDA, assert_close

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
NEG = float("-inf")


def _heads_first(t):
    return t.transpose(1, 2) if t is not None else None


def masked_reference(q, k, v, value, bias):
    """python_ref with fully masked rows defined as docs/numerics.md does (output 0, no gradient)."""
    b4 = bias[(None,) * (4 - bias.dim())]
    empty = torch.isneginf(b4).all(-1, keepdim=True)  # (·, ·, Nq, 1)
    safe = torch.where(empty, torch.zeros_like(b4), b4)
    out = python_ref.attention(_heads_first(q), _heads_first(k), _heads_first(v), value=value, bias=safe)
    empty = empty.expand(q.shape[0], q.shape[2], q.shape[1], 1)
    return torch.where(empty, torch.zeros_like(out), out).transpose(1, 2)


def _leaves(batch, n, heads, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, heads, d, generator=gen).to(DEVICE, dtype).requires_grad_() for _ in range(3)]


def _check(value, bias, dtype=torch.float32, index=None, batch=2, n=21, heads=2, d=16):
    """Forward and every gradient of the op (backend triton) against the masked reference."""
    q, k, v = _leaves(batch, n, heads, d, dtype)
    bias = bias.to(DEVICE).requires_grad_()
    vv = v if "v" in value else None
    out = attention(q, k, vv, value=value, bias=bias, bias_index=index, backend="triton")
    leaves = [q, k] + ([v] if vv is not None else []) + [bias]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    q64, k64 = ref_leaves[:2]
    v64 = ref_leaves[2] if vv is not None else None
    dense64 = python_ref.levit_bias(ref_leaves[-1], index) if index is not None else ref_leaves[-1]
    expected = masked_reference(q64, k64, v64, value, dense64)
    assert_close(out, expected, dtype, msg="out")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, leaves, dout)
    want = torch.autograd.grad(expected, ref_leaves, dout.double())
    for i, (got, ref) in enumerate(zip(grads, want)):
        assert got.shape == leaves[i].shape
        assert torch.isfinite(got).all(), f"grad {i}: not finite"
        assert_close(got, ref, dtype, scale=2.0, msg=f"grad {i}")
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("value", ["v", "q", "q+v"])
def test_fully_and_partly_masked_rows_dense_bias(value, dtype):
    n, heads = 21, 2
    bias = torch.randn(heads, n, n, generator=torch.Generator().manual_seed(1))
    bias[0, 3] = NEG                  # fully masked row, head 0
    bias[:, 17] = NEG                 # fully masked row, both heads
    bias[1, 5, :9] = NEG              # partly masked
    out, _ = _check(value, bias, dtype)
    assert (out[:, 17] == 0).all() and (out[:, 3, 0] == 0).all()


def test_masked_rows_leave_other_gradients_unchanged():
    """A fully masked row changes nothing else: gradients of k, v equal those with the row's dO = 0."""
    n, heads = 21, 2
    bias = torch.randn(heads, n, n, generator=torch.Generator().manual_seed(2))
    bias[:, 4] = NEG
    bias = bias.to(DEVICE)
    q, k, v = _leaves(2, n, heads, 16, torch.float32)
    out = attention(q, k, v, bias=bias, backend="triton")
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), dout)
    dout_zero = dout.clone()
    dout_zero[:, 4] = 0
    again = torch.autograd.grad(attention(q, k, v, bias=bias, backend="triton"), (q, k, v), dout_zero)
    for a, b in zip(got, again):
        torch.testing.assert_close(a, b)
    assert (got[0][:, 4] == 0).all()  # no gradient reaches the masked query row


@pytest.mark.parametrize("deterministic", [False, True])
def test_fully_masked_rows_through_the_levit_table(deterministic):
    n, heads, entries = 21, 2, 13
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(heads, entries, generator=gen)
    table[1, 4] = NEG
    table[:, 7] = NEG
    index = torch.randint(0, entries, (n, n), generator=gen)
    index[6] = 4          # row 6: fully masked in head 1 only
    index[9] = 7          # row 9: fully masked in both heads
    index[11, :5] = 7     # partly masked
    torch.use_deterministic_algorithms(deterministic)
    try:
        _check("q+v", table, index=index.to(DEVICE))
    finally:
        torch.use_deterministic_algorithms(False)


def test_lse_is_plus_inf_for_an_empty_row():
    q, k, v = (t.detach() for t in _leaves(1, 9, 1, 16, torch.float32))
    bias = torch.zeros(9, 9, device=DEVICE)
    bias[2] = NEG
    out, lse = ta.attention_forward(q, k, v, bias, None, value="v", scale=None, mask_diagonal=False)
    assert lse[0, 0, 2] == float("inf") and torch.isfinite(lse[0, 0, torch.arange(9) != 2]).all()
    assert (out[0, 2] == 0).all()


# ----------------------------------------------------------------------------- dense bias gradients

@pytest.mark.parametrize("shape", [(2, 21, 21), (21, 21), (1, 2, 21, 21), (3, 1, 21, 21), (3, 2, 1, 21),
                                   (2, 21, 1), (3, 2, 21, 21)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_broadcast_bias_gradient_has_the_bias_shape(shape, deterministic):
    bias = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    torch.use_deterministic_algorithms(deterministic)
    try:
        _, grads = _check("v", bias, batch=3)
    finally:
        torch.use_deterministic_algorithms(False)
    assert grads[-1].shape == bias.shape


def _allocations(monkeypatch):
    sizes = []
    for name in ("_empty", "_zeros"):
        original = getattr(ta, name)

        def spy(shape, dtype, device, original=original):
            t = original(shape, dtype, device)
            sizes.append((tuple(t.shape), t.numel()))
            return t
        monkeypatch.setattr(ta, name, spy)
    return sizes


@pytest.mark.parametrize("deterministic", [False, True])
def test_broadcast_bias_gradient_never_materialises_the_batch(monkeypatch, deterministic):
    """Peak memory of the backward: nothing as large as (B, H, Nq, Nk) is allocated for a (H, Nq, Nk) bias."""
    batch, n, heads = 8, 21, 2
    q, k, v = (t.detach() for t in _leaves(batch, n, heads, 16, torch.float32))
    bias = torch.randn(heads, n, n, device=DEVICE)
    out, lse = ta.attention_forward(q, k, v, bias, None, value="v", scale=None, mask_diagonal=False)
    sizes = _allocations(monkeypatch)
    torch.use_deterministic_algorithms(deterministic)
    try:
        *_, dbias = ta.attention_backward(torch.randn_like(out), q, k, v, bias, None, out, lse, value="v", scale=None,
                                          mask_diagonal=False, need_dbias=True)
    finally:
        torch.use_deterministic_algorithms(False)
    full = batch * heads * n * n
    gradient_buffers = [numel for shape, numel in sizes if len(shape) == 4 and shape[-2:] == (n, n)]
    assert gradient_buffers and max(gradient_buffers) <= full // 4, sizes
    assert dbias.shape == bias.shape


def _launches(monkeypatch):
    """Record (kernel name, named arguments) of every Triton launch, still running it."""
    from triton.runtime.jit import KernelInterface
    seen = []
    original = KernelInterface.__getitem__

    def getitem(self, grid):
        launch = original(self, grid)

        def recorded(*args, **kwargs):
            seen.append((getattr(self, "fn", self).__name__, dict(zip(self.arg_names, args), **kwargs)))
            return launch(*args, **kwargs)
        return recorded
    monkeypatch.setattr(KernelInterface, "__getitem__", getitem)
    return seen


@pytest.mark.parametrize("bias_kind", ["dense", "table"])
def test_deterministic_algorithms_select_the_owned_slot_reduction(monkeypatch, bias_kind):
    batch, n, heads = 3, 21, 2
    q, k, v = (t.detach() for t in _leaves(batch, n, heads, 16, torch.float32))
    index = None
    bias = torch.randn(heads, n, n, device=DEVICE)
    if bias_kind == "table":
        bias, index = torch.randn(heads, 13, device=DEVICE), torch.randint(0, 13, (n, n), device=DEVICE)
    out, lse = ta.attention_forward(q, k, v, bias, index, value="v", scale=None, mask_diagonal=False)
    dout = torch.randn_like(out)
    seen = _launches(monkeypatch)
    results = {}
    for deterministic in (False, True, True):
        torch.use_deterministic_algorithms(deterministic)
        try:
            results.setdefault(deterministic, []).append(ta.attention_backward(
                dout, q, k, v, bias, index, out, lse, value="v", scale=None, mask_diagonal=False, need_dbias=True)[3])
        finally:
            torch.use_deterministic_algorithms(False)
    modes = [args["DBIAS"] for name, args in seen if name == "_attention_bwd_dkdv_kernel"]
    atomic = ta.BiasGrad.TABLE_ATOMIC if bias_kind == "table" else ta.BiasGrad.ATOMIC
    assert modes == [atomic, ta.BiasGrad.ACCUMULATE, ta.BiasGrad.ACCUMULATE]
    first, second = results[True]
    assert torch.equal(first, second)  # bit-identical run to run
    torch.testing.assert_close(first, results[False][0], atol=1e-5, rtol=1e-5)
    if bias_kind == "table":
        assert any(name == "_table_segment_sum_kernel" for name, _ in seen)


def test_relaxed_atomics_on_the_default_path():
    """The default table / broadcast-bias gradient uses relaxed atomics (no acq_rel fences)."""
    import inspect
    source = inspect.getsource(ta._dkdv_head.fn if hasattr(ta._dkdv_head, "fn") else ta._dkdv_head)
    atomics = [line for line in source.splitlines() if "tl.atomic_add" in line]
    assert atomics and all('sem="relaxed"' in line for line in atomics)


def test_deterministic_slots_bounded(monkeypatch):
    """Several slot planes, each program adding its images in a fixed order: the same answer."""
    monkeypatch.setattr(ta, "IMAGES_PER_SLOT", 2)
    monkeypatch.setattr(ta, "REDUCE_SLOTS", 2)
    assert ta._reduce_slots(5, 21 * 21) == 2
    bias = torch.randn(2, 21, 21)
    torch.use_deterministic_algorithms(True)
    try:
        _check("v", bias, batch=5)
    finally:
        torch.use_deterministic_algorithms(False)


# ----------------------------------------------------------------------------- the LeViT index

@pytest.mark.parametrize("entries, dtype", [(13, torch.int16), (32767, torch.int16), (32768, torch.int32),
                                            (40000, torch.int32)])
def test_index_type_from_the_table_width_alone(entries, dtype):
    index = torch.tensor([[0, entries - 1], [entries // 2, 1]])
    narrow = ta._compact_index(index, entries)
    assert narrow.dtype == dtype
    assert torch.equal(narrow.to(torch.int64), index)  # every value survives exactly


def test_wide_table_keeps_int32_through_the_kernels():
    """A table wider than 32767: values past int16 are read exactly (forward and gradient)."""
    entries, n, heads = 40000, 7, 2
    gen = torch.Generator().manual_seed(6)
    table = torch.randn(heads, entries, generator=gen)
    index = torch.randint(32768, entries, (n, n), generator=gen)
    index[0, 0] = entries - 1
    _check("v", table, index=index.to(DEVICE), n=n)


def test_narrowed_index_cached_per_tensor_version():
    index = torch.randint(0, 13, (5, 5))
    first = ta._index_entry(index, 13)
    assert ta._index_entry(index, 13) is first  # forward and backward share one cast
    index[0, 0] = 3  # in place: a new version, a new narrowed copy
    second = ta._index_entry(index, 13)
    assert second is not first and torch.equal(second.narrow.to(torch.int64), index)
    with torch.inference_mode():
        frozen = torch.randint(0, 13, (5, 5))
    assert torch.equal(ta._index_entry(frozen, 13).narrow.to(torch.int64), frozen)


# ----------------------------------------------------------------------------- precision

@pytest.fixture
def allow_tf32(request):
    """torch.backends.cuda.matmul.allow_tf32 set to the test's parameter, restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = request.param
    yield request.param
    torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("allow_tf32", [False, True], indirect=True)
def test_fp32_attention_follows_allow_tf32(monkeypatch, allow_tf32):
    allow = allow_tf32
    assert ta.dot_precision(torch.float32) == ("tf32" if allow else "ieee")
    assert ta.dot_precision(torch.float16) is None and ta.dot_precision(torch.bfloat16) is None
    seen = _launches(monkeypatch)
    q, k, v = (t.detach() for t in _leaves(1, 5, 1, 16, torch.float32))
    ta.attention_forward(q, k, v, None, None, value="v", scale=None, mask_diagonal=False)
    assert seen[0][1]["PREC"] == ("tf32" if allow else "ieee")


@pytest.mark.parametrize("allow_tf32", [False, True], indirect=True)
def test_linear_attention_precisions(allow_tf32):
    from armour_kernels.triton._precision import precisions
    allow = allow_tf32
    fp32 = precisions(torch.float32)
    assert fp32 == dict(PREC_EXACT="tf32x3", PREC_VALUE="tf32" if allow else "tf32x3")
    for dtype in (torch.float16, torch.bfloat16):  # m×m and exp-feeding products stay ≈ fp32 whatever the input
        assert precisions(dtype) == dict(PREC_EXACT="tf32x3", PREC_VALUE="tf32")
