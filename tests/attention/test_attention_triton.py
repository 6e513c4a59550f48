"""What only the Triton attention launchers have (interpreter on CPU): the table gradient's partial
slots, the narrowed LeViT index, the bias gradient computed only when wanted, NaN-prefilled
outputs, the +inf lse of an empty row, broadcast-bias and table gradients on the atomic and the
deterministic paths (which kernel runs, how much memory, bit-identical runs).

The op's results on every backend, Triton included, are test_attention_op.py and
test_attention_edges.py; the fp32 dot precision is tests/triton/test_triton_precision.py.
"""
import pytest
import torch

import python_ref
from armour_kernels import attention
from armour_kernels.triton import attention as ta
from attention_checks import check_masked, qkv_leaves, reference, run_case
from helpers import HAS_CUDA, assert_close, record_launches

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
NEG = float("-inf")


def _leaves(batch, n, heads, d, dtype, seed=0):
    return qkv_leaves(batch, n, heads, d, dtype, seed, device=DEVICE)


@pytest.mark.parametrize("slots", [2, 32])
def test_table_gradient_over_a_batch(monkeypatch, slots):
    """Images add into partial tables b % slots (fewer than the batch too), summed after the kernel."""
    monkeypatch.setattr(ta, "TABLE_GRAD_SLOTS", slots)
    run_case("triton", "q+v", 49, 49, 16, 32, torch.float32, "table", batch=3)


@pytest.mark.parametrize("entries", [13, 40000])
def test_table_index_narrowed_for_the_kernel(entries):
    """The kernel reads the index as int16 (or int32 past 32768 table entries): same answer, same gradient."""
    from armour_kernels.triton.attention import _compact_index
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 7, 2, 16, generator=gen).to(DEVICE).requires_grad_() for _ in range(3))
    table = torch.randn(2, entries, generator=gen).to(DEVICE).requires_grad_()
    index = torch.randint(0, entries, (7, 7), generator=gen).to(DEVICE)
    assert _compact_index(index, entries).dtype == (torch.int16 if entries <= 2 ** 15 else torch.int32)
    out = attention(q, k, v, bias=table, bias_index=index, backend="triton")
    expected = reference(q, k, v, "v", table, index)
    assert_close(out, expected, torch.float32)
    dout = torch.randn(out.shape, generator=gen).to(DEVICE)
    got = torch.autograd.grad(out, table, dout)[0]
    want = torch.autograd.grad(expected, table, dout)[0]
    assert_close(got, want, torch.float32)


def test_bias_gradient_only_when_needed(monkeypatch):
    seen = []
    original = ta.attention_backward

    def spy(*args, need_dbias, **kwargs):
        seen.append(need_dbias)
        return original(*args, need_dbias=need_dbias, **kwargs)

    monkeypatch.setattr(ta, "attention_backward", spy)
    q = torch.randn(1, 5, 2, 16, device=DEVICE, requires_grad=True)
    bias = torch.randn(2, 5, 5, device=DEVICE)
    attention(q, q, value="q", bias=bias, backend="triton").sum().backward()
    bias.requires_grad_()
    attention(q, q, value="q", bias=bias, backend="triton").sum().backward()
    assert seen == [False, True] and bias.grad.shape == bias.shape


def test_launcher_writes_every_element(monkeypatch):
    """Outputs of the launchers pre-filled with NaN: an unwritten element fails."""
    monkeypatch.setattr(ta, "_empty",
                        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))
    batch, n, heads, d = 2, 37, 2, 16
    qkv = torch.randn(batch, n, 3, heads, d, device=DEVICE)
    q, k, v = qkv.unbind(2)
    table = torch.randn(heads, 13, device=DEVICE)
    index = torch.randint(0, 13, (n, n), device=DEVICE)
    for value in ("v", "q", "q+k"):
        vv = v if "v" in value else None
        out, lse = ta.attention_forward(q, k, vv, table, index, value=value, scale=0.3, mask_diagonal=False)
        assert not out.isnan().any() and not lse.isnan().any()
        dout = torch.randn_like(out)
        dq, dk, dv, dtable = ta.attention_backward(
            dout, q, k, vv, table, index, out, lse, value=value, scale=0.3, mask_diagonal=False, need_dbias=True)
        for t in (dq, dk, dv, dtable):
            assert t is None or not t.isnan().any()
        assert (dv is None) == ("v" not in value)
        expected_lse = python_ref.attention_lse(q.transpose(1, 2), k.transpose(1, 2), scale=0.3,
                                                bias=python_ref.levit_bias(table, index))
        assert_close(lse, expected_lse, torch.float32, msg="lse")


def test_lse_is_plus_inf_for_an_empty_row():
    q, k, v = (t.detach() for t in _leaves(1, 9, 1, 16, torch.float32))
    bias = torch.zeros(9, 9, device=DEVICE)
    bias[2] = NEG
    out, lse = ta.attention_forward(q, k, v, bias, None, value="v", scale=None, mask_diagonal=False)
    assert lse[0, 0, 2] == float("inf") and torch.isfinite(lse[0, 0, torch.arange(9) != 2]).all()
    assert (out[0, 2] == 0).all()


# ----------------------------------------------------------------------------- dense bias gradients

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
    seen = record_launches(monkeypatch)
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
        check_masked("triton", "v", bias, batch=5)
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
    check_masked("triton", "v", table, index=index, n=n)


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


