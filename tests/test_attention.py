"""The attention op (armour_kernels.attention) against python_ref in float64.

Triton runs in the interpreter on CPU (conftest sets TRITON_INTERPRET=1), fp32 and fp16, small
shapes; bf16 and large shapes run only on a GPU. Inputs are views into packed projections (as
in the models), so every kernel reads through non-trivial strides.
"""
import pytest
import torch

import python_ref
from armour_kernels import armour_attention, attention
from armour_kernels.triton import attention as triton_attention
from conftest import HAS_CUDA, assert_close, requires_cuda

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


def make_leaves(batch, nq, nk, heads, dk, dv, dtype, bias=None, seed=0):
    """Leaf tensors: one packed (B, Nk, H, 2·Dk + Dv + 3) projection, and a separate query source when Nq ≠ Nk."""
    gen = torch.Generator().manual_seed(seed)
    leaves = {"packed": torch.randn(batch, nk, heads, 2 * dk + dv + 3, generator=gen)}
    if nq != nk:
        leaves["queries"] = torch.randn(batch, nq, heads, dk + 5, generator=gen)
    if bias == "dense":
        leaves["bias"] = torch.randn(heads, nq, nk, generator=gen)  # broadcast over the batch
    if bias == "table":
        leaves["bias"] = torch.randn(heads, 13, generator=gen)
    return {name: t.to(DEVICE, dtype).requires_grad_() for name, t in leaves.items()}


def split(leaves, dk, dv):
    """q, k, v as strided views of the leaves (never contiguous)."""
    packed = leaves["packed"]
    k, v = packed[..., dk:2 * dk], packed[..., 2 * dk:2 * dk + dv]
    q = leaves["queries"][..., :dk] if "queries" in leaves else packed[..., :dk]
    return q, k, v


def reference(q, k, v, value, bias=None, bias_index=None, mask_diagonal=False):
    """python_ref in its (B, H, N, D) layout, back to (B, N, H, D)."""
    if bias is not None and bias_index is not None:
        bias = python_ref.levit_bias(bias, bias_index)

    def heads_first(t):
        return t.transpose(1, 2) if t is not None else None

    out = python_ref.attention(heads_first(q), heads_first(k), heads_first(v), value=value, bias=bias,
                               mask_diagonal=mask_diagonal)
    return out.transpose(1, 2)


def run_case(value, nq, nk, dk, dv, dtype, bias=None, mask_diagonal=False, key_is_query=False, batch=1, heads=2):
    leaves = make_leaves(batch, nq, nk, heads, dk, dv, dtype, bias)
    index = None
    if bias == "table":
        index = torch.randint(0, 13, (nq, nk), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    leaves64 = {name: t.detach().double().requires_grad_() for name, t in leaves.items()}

    def call(fn, ls):
        q, k, v = split(ls, dk, dv)
        if key_is_query:
            k = q
        return fn(q, k, v if "v" in value else None, value=value, bias=ls.get("bias"), bias_index=index,
                  mask_diagonal=mask_diagonal)

    out = call(lambda *a, **kw: attention(*a, backend="triton", **kw), leaves)
    expected = call(reference, leaves64)
    assert out.shape == expected.shape and out.dtype == dtype and out.is_contiguous()
    assert_close(out, expected, dtype, msg="out")

    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    names = list(leaves)
    grads = torch.autograd.grad(out, [leaves[n] for n in names], dout)
    grads64 = torch.autograd.grad(expected, [leaves64[n] for n in names], dout.double())
    for name, got, want in zip(names, grads, grads64):
        assert got.dtype == dtype
        assert_close(got, want, dtype, scale=2.0, msg=f"grad {name}")


# A covering matrix: every value source, bias form, the diagonal mask, N in {1, 7, 197, 260},
# d in {16, 32, 64} (+ 128 and a non power of two), Dk ≠ Dv, Nq ≠ Nk, both interpreter dtypes.
CASES = [
    # value, Nq, Nk, Dk, Dv, dtype, bias, mask_diagonal, key_is_query
    ("v", 7, 7, 16, 16, torch.float32, None, False, False),
    ("q", 197, 197, 64, 0, torch.float32, None, False, False),
    ("q", 7, 7, 32, 0, torch.float16, None, False, False),
    ("k", 260, 260, 32, 0, torch.float16, None, False, False),
    ("k", 7, 7, 16, 0, torch.float32, "dense", False, False),
    ("q+v", 49, 49, 16, 32, torch.float32, "table", False, False),
    ("q+k", 49, 49, 32, 0, torch.float16, "table", False, False),
    ("q+k", 7, 7, 16, 0, torch.float32, "dense", True, False),
    ("v", 16, 49, 16, 64, torch.float32, "table", False, False),  # LeViT subsample: Nq ≠ Nk, Dk ≠ Dv
    ("v", 7, 197, 32, 16, torch.float16, "dense", False, False),
    ("v", 197, 197, 64, 64, torch.float16, None, True, True),  # shared_qk_nodiag: k is q
    ("v", 1, 1, 16, 16, torch.float32, None, True, True),  # N = 1: the diagonal is the only key
    ("q", 1, 1, 64, 0, torch.float16, None, False, False),
    ("v", 7, 7, 128, 32, torch.float32, None, False, False),
    ("q+v", 7, 7, 80, 48, torch.float32, None, True, False),  # non-power-of-two head dims
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-N{c[1]}x{c[2]}-d{c[3]}/{c[4]}-{str(c[5])[6:]}"
                         f"-{c[6]}-{'nodiag' if c[7] else 'diag'}{'-qk' if c[8] else ''}")
def test_matches_reference(case):
    value, nq, nk, dk, dv, dtype, bias, mask, key_is_query = case
    run_case(value, nq, nk, dk, dv, dtype, bias, mask, key_is_query)


@pytest.mark.parametrize("slots", [2, 32])
def test_table_gradient_over_a_batch(monkeypatch, slots):
    """Images add into partial tables b % slots (fewer than the batch too), summed after the kernel."""
    from armour_kernels.triton import attention as triton_attention
    monkeypatch.setattr(triton_attention, "TABLE_GRAD_SLOTS", slots)
    run_case("q+v", 49, 49, 16, 32, torch.float32, "table", batch=3)


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


def test_diagonal_kept_when_no_other_key_is_finite():
    """Rows whose off-diagonal bias is all -inf keep their diagonal (forward and gradients)."""
    batch, n, heads, d = 1, 9, 2, 16
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(batch, n, heads, d, generator=gen, requires_grad=True)
    v = torch.randn(batch, n, heads, d, generator=gen, requires_grad=True)
    bias = torch.randn(heads, n, n, generator=gen)
    bias[:, 2, :] = float("-inf")
    bias[:, 2, 2] = 0.5  # row 2: only its diagonal is finite
    bias[1, 5, torch.arange(n) != 5] = float("-inf")
    out = attention(q, q, v, bias=bias, mask_diagonal=True, backend="triton")
    q64, v64 = q.detach().double().requires_grad_(), v.detach().double().requires_grad_()
    expected = reference(q64, q64, v64, "v", bias=bias.double(), mask_diagonal=True)
    assert_close(out, expected, torch.float32, msg="out")
    assert_close(out[:, 2], v[:, 2], torch.float32, msg="fallback row = its own value")
    dout = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (q, v), dout), torch.autograd.grad(expected, (q64, v64), dout.double())):
        assert_close(got, want, torch.float32, msg="grad")


def test_bias_gradient_only_when_needed(monkeypatch):
    seen = []
    original = triton_attention.attention_backward

    def spy(*args, need_dbias, **kwargs):
        seen.append(need_dbias)
        return original(*args, need_dbias=need_dbias, **kwargs)

    monkeypatch.setattr(triton_attention, "attention_backward", spy)
    q = torch.randn(1, 5, 2, 16, requires_grad=True)
    bias = torch.randn(2, 5, 5)
    attention(q, q, value="q", bias=bias, backend="triton").sum().backward()
    bias.requires_grad_()
    attention(q, q, value="q", bias=bias, backend="triton").sum().backward()
    assert seen == [False, True] and bias.grad.shape == bias.shape


def test_launcher_writes_every_element(monkeypatch):
    """Outputs of the launchers pre-filled with NaN: an unwritten element fails."""
    monkeypatch.setattr(triton_attention, "_empty",
                        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))
    batch, n, heads, d = 2, 37, 2, 16
    qkv = torch.randn(batch, n, 3, heads, d, device=DEVICE)
    q, k, v = qkv.unbind(2)
    table = torch.randn(heads, 13, device=DEVICE)
    index = torch.randint(0, 13, (n, n), device=DEVICE)
    for value in ("v", "q", "q+k"):
        vv = v if "v" in value else None
        out, lse = triton_attention.attention_forward(q, k, vv, table, index, value=value, scale=0.3,
                                                      mask_diagonal=False)
        assert not out.isnan().any() and not lse.isnan().any()
        dout = torch.randn_like(out)
        dq, dk, dv, dtable = triton_attention.attention_backward(
            dout, q, k, vv, table, index, out, lse, value=value, scale=0.3, mask_diagonal=False, need_dbias=True)
        for t in (dq, dk, dv, dtable):
            assert t is None or not t.isnan().any()
        assert (dv is None) == ("v" not in value)
        expected_lse = python_ref.attention_lse(q.transpose(1, 2), k.transpose(1, 2), scale=0.3,
                                                bias=python_ref.levit_bias(table, index))
        assert_close(lse, expected_lse, torch.float32, msg="lse")


def test_any_strides_including_the_feature_dim():
    """Feature stride ≠ 1 (a (B, N, D, H) tensor seen as (B, N, H, D)) and a stride-0 gradient (from sum())."""
    gen = torch.Generator().manual_seed(4)
    leaves = [torch.randn(2, 11, 16, 2, generator=gen).requires_grad_() for _ in range(3)]
    q, k, v = (t.transpose(2, 3) for t in leaves)
    assert q.stride(-1) != 1
    out = attention(q, k, v, value="q+v", backend="triton")
    grads = torch.autograd.grad(out.sum(), leaves)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    q64, k64, v64 = (t.transpose(2, 3) for t in leaves64)
    expected = reference(q64, k64, v64, "q+v")
    assert_close(out, expected, torch.float32)
    for got, want in zip(grads, torch.autograd.grad(expected.sum(), leaves64)):
        assert_close(got, want, torch.float32)


def test_armour_gradients_add_up_through_q():
    """Armour: q is both query and value; its gradient is the sum of both paths."""
    x = torch.randn(2, 7, 2, 2, 16, requires_grad=True)  # (B, N, 2, H, D): packed [q | k]
    out = armour_attention(x[:, :, 0], x[:, :, 1], backend="triton")
    grad, = torch.autograd.grad(out.square().sum(), x)
    x64 = x.detach().double().requires_grad_()
    expected = reference(x64[:, :, 0], x64[:, :, 1], None, "q")
    grad64, = torch.autograd.grad(expected.square().sum(), x64)
    assert_close(grad, grad64, torch.float32)


def test_reference_backend_matches():
    q, k, v = torch.randn(3, 1, 9, 2, 16, dtype=torch.float64).unbind(0)
    for value in ("v", "q+v"):
        got = attention(q, k, v, value=value, backend="reference", mask_diagonal=True)
        assert_close(got, reference(q, k, v, value, mask_diagonal=True), torch.float64)


def test_torch_compile_fullgraph_keeps_the_custom_op():
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    def step(x, table, index):
        return attention(x[:, :, 0], x[:, :, 1], value="q+k", bias=table, bias_index=index, backend="triton").sum()

    x = torch.randn(1, 9, 2, 2, 16, requires_grad=True)
    table = torch.randn(2, 5, requires_grad=True)
    index = torch.randint(0, 5, (9, 9))
    compiled = torch.compile(step, fullgraph=True, backend=record)
    loss = compiled(x, table, index)
    assert any("armour_kernels.attention_fwd" in g for g in graphs)
    grads = torch.autograd.grad(loss, (x, table))
    expected = torch.autograd.grad(step(x, table, index), (x, table))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    explanation = torch._dynamo.explain(step)(x, table, index)
    assert explanation.graph_break_count == 0


def test_torch_compile_aot_autograd_through_the_op():
    """AOT autograd traces forward and backward with the fake implementations (inductor would
    only add C++ compile time here); the reference path compiles alongside."""
    def step(q, k):
        return (attention(q, k, value="q", backend="triton") + attention(q, k, value="q", backend="reference")).sum()

    q, k = torch.randn(2, 1, 7, 2, 16).unbind(0)
    q.requires_grad_()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(q, k)
    torch.testing.assert_close(got, step(q, k), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(got, q)[0], torch.autograd.grad(step(q, k), q)[0],
                               atol=1e-5, rtol=1e-5)


def _bad_inputs():
    q = torch.randn(1, 5, 2, 16)
    k = torch.randn(1, 5, 2, 16)
    v = torch.randn(1, 5, 2, 16)
    table = torch.randn(2, 9)
    index = torch.zeros(5, 5, dtype=torch.int64)
    return [
        (lambda: attention(q, k[..., :8], v), ValueError, "agree in B, H and D"),
        (lambda: attention(q, k.double(), v), TypeError, "q is torch.float32"),
        (lambda: attention(q.long(), k.long(), v.long()), TypeError, "floating-point"),
        (lambda: attention(q[0], k[0], v[0]), ValueError, r"\(B, N, H, D\)"),
        (lambda: attention(torch.randn(1, 5, 2, 300), torch.randn(1, 5, 2, 300), value="q"), ValueError, "256"),
        (lambda: attention(q, k, v, bias=torch.randn(3, 5, 5)), ValueError, "does not broadcast"),
        (lambda: attention(q, k, v, bias_index=index), ValueError, "needs the bias table"),
        (lambda: attention(q, k, v, bias=table, bias_index=index.float()), TypeError, "int64"),
        (lambda: attention(q, k, v, bias=table, bias_index=index[:4]), ValueError, r"\(Nq, Nk\)"),
        (lambda: attention(q, k, v, bias=torch.randn(3, 9), bias_index=index), ValueError, r"\(H, R\) table"),
        (lambda: attention(q, k, v, bias=table, bias_index=index + 9), ValueError, "outside the table"),
        (lambda: attention(q, k), ValueError, "needs v"),
        (lambda: attention(q, k, v, value="q"), ValueError, "does not use it"),
        (lambda: attention(q[:, :3], k, value="q"), ValueError, "as many queries as keys"),
        (lambda: attention(q, k, v, value="w"), ValueError, "value must be one of"),
        (lambda: attention(q, k, v, backend="cuda"), ValueError, "backend must be one of"),
        (lambda: attention(q, k, v[:, :4]), ValueError, "must match k"),
        (lambda: attention(q.double(), k.double(), v.double(), backend="triton"), TypeError, "reference"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_inputs_raise_clear_errors(case):
    fn, error, message = _bad_inputs()[case]
    with pytest.raises(error, match=message):
        fn()


# ----------------------------------------------------------------------------- GPU only

@requires_cuda
@pytest.mark.parametrize("value", ["v", "q", "q+v"])
def test_bf16_on_gpu(value):
    run_case(value, 197, 197, 64, 64, torch.bfloat16, bias="table" if value == "q+v" else None, batch=2, heads=3)


@requires_cuda
@pytest.mark.parametrize("dk,dv,n", [(64, 64, 1024), (128, 128, 2048), (16, 32, 196)])
def test_large_shapes_on_gpu(dk, dv, n):
    run_case("q" if dk == dv else "v", n, n, dk, dv, torch.float16, batch=2, heads=4)
