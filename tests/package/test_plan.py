"""armour_kernels.plan: each family's plan on CPU tensors (what would run, and why)."""
from __future__ import annotations

import pytest
import torch

import armour_kernels
from armour_kernels import cpu, plan, use_backend

needs_cpu = pytest.mark.skipif(not cpu.built(), reason="the C++ extension is not built")


def _qk(b=1, n=8, h=2, d=16, dtype=torch.float32, nk=None, grad=False):
    q = torch.randn(b, n, h, d, dtype=dtype, requires_grad=grad)
    k = torch.randn(b, n if nk is None else nk, h, d, dtype=dtype, requires_grad=grad)
    return q, k


def test_explain_is_public_and_names_every_family():
    assert armour_kernels.plan is plan
    q, k = _qk()
    assert armour_kernels.explain("attention", q, k) == plan.attention_plan(q, k)
    with pytest.raises(ValueError, match="op must be one of"):
        plan.explain("conv", q)


def test_plans_are_cached_frozen_objects():
    q, k = _qk()
    first, second = plan.attention_plan(q, k, backend="reference"), plan.attention_plan(q, k, backend="reference")
    assert first is second
    with pytest.raises(AttributeError):
        first.path = "torch"


@needs_cpu
@pytest.mark.parametrize("dtype,compute", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                           (torch.float16, torch.float32), (torch.float64, torch.float64)])
@pytest.mark.parametrize("grad", [False, True])
def test_attention_cpu(dtype, compute, grad):
    q, k = _qk(dtype=dtype, grad=grad)
    p = plan.attention_plan(q, k)
    assert (p.backend, p.path, p.compute_dtype, p.empty) == ("cpu", "dispatcher", compute, False)
    assert p.isa == cpu.isa() and p.min_flops is None  # float16: float32 on the path's fp32 engine, not AMX


def test_attention_reference_forced_and_empty():
    q, k = _qk(dtype=torch.float16)
    p = plan.attention_plan(q, k, backend="reference")
    assert (p.backend, p.path, p.compute_dtype, p.isa) == ("reference", "reference", torch.float32, None)
    with use_backend("reference"):
        assert plan.attention_plan(q, k) is p
    assert plan.attention_plan(*_qk(nk=0), backend="reference").empty  # no keys: zeros
    assert plan.attention_plan(*_qk(b=0), backend="reference").empty  # no batch: an empty output


def test_attention_triton_on_cpu_tensors_is_the_interpreter():
    q, k = _qk()
    p = plan.attention_plan(q, k, backend="triton")
    assert (p.backend, p.path, p.compute_dtype, p.isa) == ("triton", "triton-interpreter", torch.float32, None)


def test_attention_forced_backend_that_cannot_run_is_an_error():
    with pytest.raises(RuntimeError, match="needs CPU tensors"):
        plan.attention_path(torch.empty(1, 1, 1, 1, device="meta"), "cpu")


def _linear(n_rows=4, k=16, n=16, dtype=torch.float32, grad=False):
    x = torch.randn(n_rows, k, dtype=dtype)
    w = torch.randn(n, k, dtype=dtype, requires_grad=grad)
    return x, w, torch.randn(n, dtype=dtype)


@needs_cpu
def test_linear_act_inference_engine_by_flops(monkeypatch):
    with torch.no_grad():
        small = plan.linear_act_plan(*_linear(), act="hardswish")
        assert (small.backend, small.path, small.compute_dtype) == ("cpu", "aten", torch.float32)
        assert small.min_flops == plan.ONEDNN_MIN_FLOPS[torch.float32] and small.isa is None
        monkeypatch.setattr(plan, "ONEDNN_MIN_FLOPS", {torch.float32: 0.0})
        assert plan.linear_act_plan(*_linear(), act="hardswish").path == "onednn"
    assert not plan.cpu_inference("cpu", torch.float64, torch.ones(1), False)  # no oneDNN float64


@needs_cpu
def test_linear_act_grad_paths():
    x, w, b = _linear(grad=True)
    p = plan.linear_act_plan(x, w, b, act="hardswish")
    assert (p.path, p.compute_dtype, p.isa) == ("autograd-op", torch.float32, cpu.isa())
    assert plan.linear_act_plan(x, w, b, act="gelu").path == "torch"  # no fused kernel with autograd for GELU
    assert plan.linear_act_plan(x, w, b, act="hardswish", act_in=True).path == "torch"
    x16, w16, b16 = _linear(dtype=torch.float16, grad=True)
    assert plan.linear_act_plan(x16, w16, b16, act="hardswish").compute_dtype == torch.float32


@needs_cpu
def test_linear_act_float16_inference_and_empty_run_pytorch():
    with torch.no_grad():
        assert plan.linear_act_plan(*_linear(dtype=torch.float16), act="relu").path == "torch"
        p = plan.linear_act_plan(*_linear(n_rows=0), act="relu")
        assert (p.path, p.empty) == ("torch", True)


@needs_cpu
def test_linear_act_compute_dtype_under_autocast():
    if not plan.cpu_inference("cpu", torch.bfloat16, torch.ones(1), False):
        pytest.skip("no oneDNN bf16 here")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        p = plan.linear_act_plan(*_linear(), act="hardswish")
    assert p.compute_dtype == torch.bfloat16 and p.path in ("aten", "onednn")


def test_linear_act_reference_and_triton():
    x, w, b = _linear()
    with torch.no_grad():
        assert plan.linear_act_plan(x, w, b, act="hardswish", backend="reference").path == "torch"
        assert plan.linear_act_plan(x, w, b, act="hardswish", backend="triton").path == "triton-infer"
        assert plan.linear_act_plan(x, w, b, backend="triton").path == "torch"  # a plain GEMM
    x, w, b = _linear(grad=True)
    assert plan.linear_act_plan(x, w, b, act="hardswish", backend="triton").path == "autograd-op"


@pytest.mark.parametrize("family", [plan.nystrom_plan, plan.performer_plan])
def test_linear_attention_plans(family):
    q, _ = _qk(dtype=torch.float16)
    if cpu.built():
        p = family(q)
        assert (p.backend, p.path, p.compute_dtype, p.empty) == ("cpu", "dispatcher", torch.float32, False)
    p = family(q, backend="triton")
    assert (p.path, p.compute_dtype) == ("triton-interpreter", torch.float16)  # float32 accumulation
    ref = family(q.double(), backend="reference")
    assert (ref.path, ref.compute_dtype) == ("reference", torch.float64)
    with pytest.raises(TypeError, match="use backend='reference'"):
        family(q.double(), backend="triton")
    empty = family(_qk(b=0, dtype=torch.float64)[0], backend="triton")  # nothing to compute: no dtype error
    assert empty.empty


def test_plans_trace_without_graph_breaks(monkeypatch):
    monkeypatch.setattr(plan, "_PLANS", {})  # the plan objects made while tracing, too

    @torch.compile(fullgraph=True, backend="eager")
    def traced(q, x, w):
        scaled = q * 2 if plan.attention_path(q, "reference") == "reference" else q
        _, path, dtype = plan.linear_act_path(x, w, None, "relu", False, None, "reference")
        linear = x.to(dtype) if path == "torch" else x
        return scaled, linear, q + 1 if plan.nystrom_plan(q, backend="reference").empty else q

    q, _ = _qk()
    x, w, _ = _linear()
    scaled, linear, same = traced(q, x, w)
    assert torch.equal(scaled, q * 2) and torch.equal(linear, x) and torch.equal(same, q)


def test_dense_takes_rows_is_the_rule_both_linear_act_and_the_runner_follow(monkeypatch):
    """Any rows where a dtype has no DENSE_MAX_ROWS limit (none by default); up to the limit where one is set;
    rows are all but the last dim."""
    from armour_kernels import plan
    from armour_kernels.plan import dense_takes_rows
    assert dense_takes_rows(torch.bfloat16, (64, 197, 192))
    limit = 512
    monkeypatch.setitem(plan.DENSE_MAX_ROWS, torch.bfloat16, limit)
    assert dense_takes_rows(torch.float32, (64, 197, 192))
    assert dense_takes_rows(torch.bfloat16, (1, limit, 192)) and not dense_takes_rows(torch.bfloat16, (1, limit + 1, 192))
    assert dense_takes_rows(torch.bfloat16, (2, limit // 2, 8)) and not dense_takes_rows(torch.bfloat16, (3, limit // 2, 8))
    assert dense_takes_rows(torch.bfloat16, (0, 192)) and dense_takes_rows(torch.bfloat16, (4, 0))
