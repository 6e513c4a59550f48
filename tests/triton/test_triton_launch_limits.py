"""Triton launchers within CUDA's limits, checked without a GPU: launch grids for B·H up to 2**24
(every launcher, by intercepting the launch on meta tensors), grids stacked past axis 0 (run in
the interpreter), 64-bit batch offsets (strides past 2**31 on a sparse 4 GiB buffer), the
autotuning keys, empty batches, and the backend's own constants and pinv.
"""
import os
import re
import resource

import pytest
import torch
import triton
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import KernelInterface

import armour_kernels
import python_ref
from armour_kernels.constants import BiasKind, ValueSource
from armour_kernels.triton import _grid
from armour_kernels.triton import attention as ta
from armour_kernels.triton import linear_act as tla
from armour_kernels.triton import nystrom as tn
from armour_kernels.triton import performer as tp
from helpers import HAS_CUDA, run_compiled_script

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="interpreter / meta-tensor checks of the launchers (CPU only)")

MAX_X, MAX_YZ = 2 ** 31 - 1, 65535


# ----------------------------------------------------------------------------- grids on meta tensors

@pytest.fixture
def grids(monkeypatch):
    """Launches record (kernel, grid, named args) instead of running; autotuned launches record the
    grid of every config their pruner keeps."""
    seen = []

    def getitem(self, grid):
        def launch(*args, **kwargs):
            named = dict(zip(self.arg_names, args), **kwargs)
            name = getattr(self, "fn", self).__name__
            if isinstance(self, Autotuner):
                self.nargs = named
                for config in self.prune_configs(kwargs):
                    meta = {**named, **config.all_kwargs()}
                    seen.append((name, grid(meta) if callable(grid) else grid, meta))
            else:
                seen.append((name, grid(named) if callable(grid) else grid, named))
        return launch

    monkeypatch.setattr(KernelInterface, "__getitem__", getitem)
    return seen


def _meta(*shape, dtype=torch.float16):
    return torch.empty(shape, dtype=dtype, device="meta")


def _assert_within_limits(seen, kernels):
    assert {name for name, _, _ in seen} >= set(kernels), {name for name, _, _ in seen}
    for name, grid, _ in seen:
        grid = tuple(grid)
        assert 1 <= len(grid) <= 3, (name, grid)
        assert 1 <= grid[0] <= MAX_X and all(1 <= g <= MAX_YZ for g in grid[1:]), (name, grid)


ATTENTION_KERNELS = ["_attention_fwd_kernel", "_attention_bwd_preprocess_kernel", "_attention_bwd_dkdv_kernel",
                     "_attention_bwd_dq_kernel"]


@pytest.mark.parametrize("gpu_path", [False, True])
@pytest.mark.parametrize("batch, heads, n", [(2 ** 22, 4, 197), (2 ** 21, 8, 16384), (2 ** 24, 1, 49)])
def test_attention_grids_for_huge_batches(grids, monkeypatch, gpu_path, batch, heads, n):
    """B·H = 2**24 (DeiT / LeViT shapes and a long sequence that needs a stacked grid)."""
    if gpu_path:  # the autotuned launches, as on CUDA
        monkeypatch.setattr(ta, "triton_interpreting", lambda: False)
    q, k, v = _meta(batch, n, heads, 16), _meta(batch, n, heads, 16), _meta(batch, n, heads, 32)
    table, index = _meta(heads, 13), torch.zeros(n, n, dtype=torch.int64, device="meta")
    dense = _meta(heads, n, n)
    for bias, bias_index, value, mask in ((table, index, "q+v", False), (dense, None, "v", True),
                                          (None, None, "q", False)):
        vv = v if "v" in value else None
        kw = dict(value=value, scale=None, mask_diagonal=mask)
        out, lse = ta.attention_forward(q, k, vv, bias, bias_index, **kw)
        ta.attention_backward(torch.empty_like(out), q, k, vv, bias, bias_index, out, lse, need_dbias=True, **kw)
    torch.use_deterministic_algorithms(True)
    try:  # the deterministic dense-bias reduction's own grid
        out, lse = ta.attention_forward(q, k, v, dense, None, value="v", scale=None, mask_diagonal=False)
        ta.attention_backward(torch.empty_like(out), q, k, v, dense, None, out, lse, value="v", scale=None,
                              mask_diagonal=False, need_dbias=True)
    finally:
        torch.use_deterministic_algorithms(False)
    _assert_within_limits(grids, ATTENTION_KERNELS)
    for name, grid, meta in grids:  # enough programs for every (row block, b, h)
        if name == "_attention_fwd_kernel":
            blocks = triton.cdiv(n, meta.get("BLOCK_M", 32))
            assert grid[0] * (grid[1] if len(grid) > 1 else 1) >= blocks * batch * heads


def test_linear_attention_grids_for_huge_batches(grids):
    batch, heads, n, d = 2 ** 22, 4, 1025, 32
    q, k, v = (_meta(batch, n, heads, d) for _ in range(3))
    conv = torch.empty(heads, 1, 33, 1, device="meta")
    for m in (8, 64, 96):  # on-chip pinv and the PyTorch one
        out, saved = tn.nystrom_forward(q, k, v, conv, num_landmarks=m, value="v")
        tn.nystrom_backward(torch.empty_like(out), q, k, v, conv, saved, num_landmarks=m, value="v")
    projection = torch.empty(110, d, device="meta")
    for kernel in ("softmax", "relu"):
        out, ctx, ksum, stab = tp.performer_forward(q, k, v, projection, kernel=kernel, mode="clean", value="v")
        tp.performer_backward(torch.empty_like(out), q, k, v, projection, ctx, ksum, stab, kernel=kernel,
                              mode="clean", value="v")
    _assert_within_limits(grids, ["_landmarks_kernel", "_a3v_kernel", "_pinv_kernel", "_output_kernel",
                                  "_bwd_query_kernel", "_bwd_key_kernel", "_key_max_kernel", "_context_kernel",
                                  "_bwd_query_rows_kernel", "_bwd_query_reduce_kernel"])


@pytest.mark.parametrize("gpu_path", [False, True])
def test_linear_act_grid_for_huge_row_counts(grids, monkeypatch, gpu_path):
    if gpu_path:
        monkeypatch.setattr(tla, "triton_interpreting", lambda: False)
    for rows in (2 ** 24 * 197, 2 ** 40):  # the second needs more than 2**31 programs: a stacked grid
        x, w, b = _meta(rows, 128), _meta(256, 128), _meta(256)
        tla.linear_act_forward(x, w, b, act_out=True)
    _assert_within_limits(grids, ["_linear_act_kernel"])
    assert any(len(grid) > 1 and grid[1] > 1 for _, grid, _ in grids)


def test_flat_grid_arithmetic():
    assert _grid.flat_grid(5) == (5, 1)
    assert _grid.flat_grid(MAX_X) == (MAX_X, 1)
    x, y = _grid.flat_grid(2 ** 40)
    assert x <= MAX_X and y <= MAX_YZ and x * y >= 2 ** 40 and x * y - 2 ** 40 < y
    with pytest.raises(ValueError, match="CUDA launch"):
        _grid.flat_grid(MAX_X * (MAX_YZ + 1))


# ----------------------------------------------------------------------------- stacked grids, run

def _run_everything(seed=0):
    """Small problems through every launcher; returns all outputs and gradients."""
    gen = torch.Generator().manual_seed(seed)
    results = []
    q, k, v = (torch.randn(2, 37, 2, 16, generator=gen) for _ in range(3))
    bias, table = torch.randn(2, 37, 37, generator=gen), torch.randn(2, 13, generator=gen)
    index = torch.randint(0, 13, (37, 37), generator=gen)
    for b, idx, value in ((table, index, "q+v"), (bias, None, "v")):
        kw = dict(value=value, scale=None, mask_diagonal=False)
        out, lse = ta.attention_forward(q, k, v, b, idx, **kw)
        results += [out, lse, *ta.attention_backward(torch.ones_like(out), q, k, v, b, idx, out, lse,
                                                     need_dbias=True, **kw)]
    conv = torch.randn(2, 1, 5, 1, generator=gen)
    out, saved = tn.nystrom_forward(q, k, v, conv, num_landmarks=8)
    results += [out, *tn.nystrom_backward(torch.ones_like(out), q, k, v, conv, saved, num_landmarks=8)]
    torch.manual_seed(seed)
    projection = python_ref.gaussian_orthogonal_random_matrix(24, 16)
    out, *state = tp.performer_forward(q, k, v, projection, kernel="softmax", mode="clean", value="v")
    results += [out, *tp.performer_backward(torch.ones_like(out), q, k, v, projection, *state, kernel="softmax",
                                            mode="clean", value="v")]
    x, w = torch.randn(70, 48, generator=gen), torch.randn(130, 48, generator=gen)
    results.append(tla.linear_act_forward(x, w, act_out=True))
    return results


def test_stacked_grids_compute_the_same(monkeypatch):
    """With axis 0 capped at 5 programs every launch stacks rows along axis 1 (with padding
    programs that return at once): the results are those of the flat launch."""
    expected = _run_everything()
    monkeypatch.setattr(_grid, "MAX_GRID_X", 5)
    seen = []
    original = KernelInterface.__getitem__

    def getitem(self, grid):
        seen.append(grid)
        return original(self, grid)
    monkeypatch.setattr(KernelInterface, "__getitem__", getitem)
    got = _run_everything()
    assert seen and all(len(g) == 2 and g[0] <= 5 for g in seen if not callable(g))
    assert any(g[1] > 1 for g in seen if not callable(g))
    for a, b in zip(got, expected):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- 64-bit offsets

def _far_apart(batch, n, heads, d, parts=3, dtype=torch.float16, seed=0):
    """`parts` (B, N, H, D) views with a batch stride of 2**30 + 1024 elements: an int32 argument,
    but b·stride passes 2**31 at b = 2. The 4 GiB buffer is never touched except where the views
    lie (the allocation is lazy, and the interpreter works on the storage in place)."""
    stride_b = 2 ** 30 + 1024
    per = n * heads * d
    base = torch.empty(stride_b * (batch - 1) + parts * per, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    views = []
    for i in range(parts):
        view = base.as_strided((batch, n, heads, d), (stride_b, heads * d, d, 1), storage_offset=i * per)
        view.copy_(torch.randn(view.shape, generator=gen))
        views.append(view)
    return views


def _touched_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("family", ["attention", "nystrom", "performer"])
def test_batch_offsets_past_2_31(family):
    """Batch offsets b·stride past 2**31 elements (int32 would wrap): same numbers as the same
    inputs made contiguous, forward and backward."""
    batch = 3
    q, k, v = _far_apart(batch, 8, 1, 16)
    assert q.stride(0) * (batch - 1) >= 2 ** 31 > q.stride(0)
    rss_before = _touched_mib()
    projection = python_ref.gaussian_orthogonal_random_matrix(16, 16)

    def run(q, k, v):
        if family == "attention":
            kw = dict(value="q+v", scale=None, mask_diagonal=False)
            out, lse = ta.attention_forward(q, k, v, None, None, **kw)
            return [out, *ta.attention_backward(torch.ones_like(out), q, k, v, None, None, out, lse,
                                                need_dbias=False, **kw)[:3]]
        if family == "nystrom":
            out, saved = tn.nystrom_forward(q, k, v, None, num_landmarks=4)
            return [out, *tn.nystrom_backward(torch.ones_like(out), q, k, v, None, saved, num_landmarks=4)[:3]]
        out, *state = tp.performer_forward(q, k, v, projection, kernel="softmax", mode="clean", value="v")
        return [out, *tp.performer_backward(torch.ones_like(out), q, k, v, projection, *state, kernel="softmax",
                                            mode="clean", value="v")]

    got = run(q, k, v)
    want = run(q.contiguous(), k.contiguous(), v.contiguous())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert _touched_mib() - rss_before < 1024  # the sparse buffer was never copied


# ----------------------------------------------------------------------------- autotuning keys

def test_attention_autotune_keys():
    common = ["NQ_BUCKET", "NK_BUCKET", "BLOCK_DK", "BLOCK_D1", "BLOCK_D2", "BIAS", "MASK_DIAG", "PREC"]
    assert ta._fwd_tuned.keys == common + ["HAS_P2"]
    assert ta._dkdv_tuned.keys == common + ["P1", "P2", "DBIAS"]
    assert ta._dq_tuned.keys == common + ["P1", "P2"]
    assert tla._linear_act_autotuned.keys == ["M_BUCKET", "N", "K", "HAS_BIAS", "HAS_RES", "ACT_IN", "ACT_OUT",
                                               "IEEE_FP32"]


def test_launchers_pass_power_of_two_buckets(grids):
    keys = []
    for batch, heads, n in ((3, 4, 197), (64, 4, 200), (1, 4, 256)):  # any batch, N 197..256: one bucket
        q = _meta(batch, n, heads, 16)
        ta.attention_forward(q, q, None, None, None, value="q", scale=None, mask_diagonal=False)
        name, _, meta = grids[-1]
        assert (meta["NQ_BUCKET"], meta["NK_BUCKET"]) == (256, 256)
        keys.append(tuple(meta[k] for k in ta._fwd_tuned.keys))
    assert len(set(keys)) == 1  # one tuning serves all three
    for rows in (700, 1000):
        tla.linear_act_forward(_meta(rows, 64), _meta(32, 64))
        assert grids[-1][2]["M_BUCKET"] == 1024


# ----------------------------------------------------------------------------- empty, constants, pinv

@pytest.mark.parametrize("op", ["nystrom", "performer"])
def test_empty_batch_returns_empty(op):
    q, k, v = (torch.randn(0, 9, 2, 16, requires_grad=True) for _ in range(3))
    if op == "nystrom":
        out = armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, backend="triton")
    else:
        out = armour_kernels.performer_attention(q, k, v, projection=torch.randn(8, 16), backend="triton")
    assert out.shape == (0, 9, 2, 16)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(g.shape == t.shape for g, t in zip(grads, (q, k, v)))


def test_triton_constants_come_from_the_enums():
    from armour_kernels.triton import _constants as c
    assert [c.SRC_NONE.value, c.SRC_V.value, c.SRC_Q.value, c.SRC_K.value] == [int(s) for s in ValueSource]
    assert [c.BIAS_NONE.value, c.BIAS_DENSE.value, c.BIAS_TABLE.value] == [int(b) for b in BiasKind]
    for module in (ta, tn, tp, tla):  # kernels compare codes by name, never against bare literals
        with open(module.__file__) as f:
            source = f.read()
        assert not re.search(r"\b(BIAS|P1|P2|DBIAS|SRC\w*) *[!=]= *\d", source), module.__name__
        assert "1.4426950408889634" not in source and "0.6931471805599453" not in source
        assert "python_ref" not in source, module.__name__


@pytest.mark.parametrize("mode", ["clean", "seed"])
def test_backend_pinv_is_the_reference_pinv(mode):
    from armour_kernels.triton._pinv import landmark_pinv
    a = torch.softmax(torch.randn(2, 3, 9, 9, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(landmark_pinv(a, 6, mode), python_ref.razavi_pinv(a, 6, mode), rtol=0, atol=0)


def test_interpreter_patch_only_when_interpreting():
    script = '''
import os
from triton.runtime import interpreter
import armour_kernels.triton.attention
patched = getattr(interpreter._patch_lang_tensor, "_armour_index_fix", False)
assert patched == (os.environ.get("TRITON_INTERPRET") == "1"), patched
print("compiled")
'''
    run_compiled_script(script, timeout=120)  # TRITON_INTERPRET unset there: no patch
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-2000:]


def test_config_pruner_follows_the_compile_report():
    """The pruner's shared-memory model reproduces the sm_90 report's figures without a bias, and
    per problem it keeps the report's spill-free wgmma configs and drops what cannot fit."""
    est = ta._estimates
    assert est("fwd", 128, 64, 8, 3, 64, 64, 0, 2)[0] == 64 * 1024     # DeiT-Ti, measured 64 KiB
    assert est("fwd", 64, 64, 4, 3, 256, 256, 0, 2)[0] == 224 * 1024   # d = 256, measured 224 KiB
    assert est("dkdv", 64, 64, 8, 3, 64, 64, 0, 2)[0] // 1024 == 64    # measured 65 KiB (+ scratch)

    def kept(kernel, tuned, dk, d1, d2=0, bias=0, dtype=torch.bfloat16):
        meta = dict(BLOCK_DK=dk, BLOCK_D1=d1, BLOCK_D2=d2, HAS_P2=d2 > 0, P2=int(d2 > 0), BIAS=bias,
                    Q=torch.empty(1, dtype=dtype))
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                for c in ta._pruner(kernel)(tuned.configs, meta)]

    for kernel, tuned, configs in (("fwd", ta._fwd_tuned, ta._FWD_CONFIGS), ("dkdv", ta._dkdv_tuned, ta._DKDV_CONFIGS),
                                   ("dq", ta._dq_tuned, ta._DQ_CONFIGS)):
        assert kept(kernel, tuned, 64, 64)[0] == configs[0]                # the report's first choice survives
        assert kept(kernel, tuned, 16, 16, 32, bias=2)[0] == configs[0]    # at the LeViT shapes too
    assert kept("fwd", ta._fwd_tuned, 64, 64) == ta._FWD_CONFIGS                      # DeiT: every config
    assert (128, 64, 8, 3) not in kept("fwd", ta._fwd_tuned, 256, 256)                # 256 KiB: over the SM
    assert (64, 64, 4, 3) in kept("fwd", ta._fwd_tuned, 256, 256)                     # 224 KiB: fits
    assert (128, 128, 8, 3) not in kept("fwd", ta._fwd_tuned, 16, 16, 32, bias=2)     # spills with the table
    assert (64, 32, 8, 3) in kept("dkdv", ta._dkdv_tuned, 256, 256)                   # d = 256: the spill-free one
    assert (64, 32, 8, 3) not in kept("dkdv", ta._dkdv_tuned, 16, 64, bias=2)         # mma.sync + bias: spills
    assert (128, 128, 8, 3) in kept("fwd", ta._fwd_tuned, 128, 128)                   # 224 KiB in bf16
    assert (128, 128, 8, 3) not in kept("fwd", ta._fwd_tuned, 128, 128, dtype=torch.float32)  # twice that in fp32


def test_autotuner_benchmarks_a_shortlist(monkeypatch):
    """At most 3 configs per key (a cold cache's compile budget), none with tiles wider than the
    sequence (LeViT's last stage: 16 tokens); ARMOUR_TRITON_AUTOTUNE=full widens it to every fit."""
    def kept(kernel, tuned, n):
        meta = dict(BLOCK_DK=16, BLOCK_D1=16, BLOCK_D2=16, HAS_P2=True, P2=1, BIAS=2, NQ_BUCKET=n, NK_BUCKET=n,
                    Q=torch.empty(1, dtype=torch.bfloat16))
        return ta._shortlist(kernel)(tuned.configs, meta)

    for kernel, tuned in ta.TUNED.items():
        short = kept(kernel, tuned, 16)
        assert 1 <= len(short) <= 3 and all(c.kwargs["BLOCK_M"] <= 32 and c.kwargs["BLOCK_N"] <= 32 for c in short)
        assert len(kept(kernel, tuned, 256)) == 3
        monkeypatch.setenv("ARMOUR_TRITON_AUTOTUNE", "full")
        assert len(kept(kernel, tuned, 256)) == len(ta._pruner(kernel)(tuned.configs, dict(
            BLOCK_DK=16, BLOCK_D1=16, BLOCK_D2=16, HAS_P2=True, P2=1, BIAS=2, Q=torch.empty(1, dtype=torch.bfloat16))))
        monkeypatch.delenv("ARMOUR_TRITON_AUTOTUNE")
    assert len(tla._prune(tla._linear_act_autotuned.configs, dict(N=256, M_BUCKET=64))) <= 3


def test_shared_memory_limit_defaults_to_the_h100():
    assert ta.shared_memory_limit(torch.device("cpu")) == ta.SHARED_MEMORY_BYTES == 232448
