"""The package as users meet it: public names, the backend policy, empty inputs, argument errors."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import armour_kernels
from armour_kernels import backend as policy
from armour_kernels.backend import cpu_has_op

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_CPU = cpu_has_op("attention")
KERNEL_BACKENDS = ["reference", "triton"] + (["cpu"] if HAS_CPU else [])


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO, **env}, timeout=300)


# ----------------------------------------------------------------------------- public names

def test_nn_exports_every_fused_module():
    from armour_kernels.nn import (ArmourAttention, FusedDeiTAttention, FusedMlp, FusedViXAttention,  # noqa: F401
                                   LevitAttention, LevitAttentionDownsample, LevitBlock, LevitDownsampleBlock,
                                   LevitMlp, LevitStem, NystromAttention, PerformerAttention)
    import armour_kernels.nn as fused_nn
    for name in fused_nn.__all__:
        assert hasattr(fused_nn, name), name


def test_submodules_are_attributes_of_the_package():
    for name in ("nn", "cpu", "export", "constants"):
        assert getattr(armour_kernels, name).__name__ == f"armour_kernels.{name}"
    assert "triton" in dir(armour_kernels)
    with pytest.raises(AttributeError):
        armour_kernels.no_such_thing  # noqa: B018


def test_importing_the_package_does_not_import_triton():
    result = _run("import sys, armour_kernels; print('triton' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_kernel_code_never_imports_python_ref():
    """cpu/ and triton/ (the kernels and their launchers) work with python_ref unimportable."""
    code = ("import sys; sys.modules['python_ref'] = None\n"
            "import armour_kernels.cpu.attention, armour_kernels.cpu.linear_act\n"
            "import armour_kernels.triton.attention, armour_kernels.triton.linear_act\n"
            "import armour_kernels.ops.attention, armour_kernels.ops.linear_act\n"
            "print('ok')")
    result = _run(code, TRITON_INTERPRET="1")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# ----------------------------------------------------------------------------- backend policy

def test_backends_reports_every_backend_with_a_reason():
    report = armour_kernels.backends()
    assert set(report) == {"triton", "cpu", "reference"}
    for name, status in report.items():
        assert isinstance(status["available"], bool) and status["reason"], name
    assert report["reference"]["available"]
    assert report["cpu"]["available"] == HAS_CPU


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        policy.select("attention", torch.device("cpu"), "gpu")
    with pytest.raises(TypeError, match="backend must be a string"):
        policy.select("attention", torch.device("cpu"), None)
    with pytest.raises(ValueError, match="backend must be one of"):
        with armour_kernels.use_backend("fast"):
            pass


def test_use_backend_overrides_auto_but_not_an_explicit_argument():
    cpu = torch.device("cpu")
    with armour_kernels.use_backend("reference"):
        assert policy.select("attention", cpu) == "reference"
        assert policy.select("attention", cpu, "auto") == "reference"
        with armour_kernels.use_backend("triton"):
            assert policy.requested() == "triton"
        assert policy.requested() == "reference"
        if HAS_CPU:
            assert policy.select("attention", cpu, "cpu") == "cpu"
    assert policy.requested() == policy._ENV_BACKEND


def test_use_backend_reaches_ops_and_modules():
    q = torch.randn(1, 5, 2, 8)
    with armour_kernels.use_backend("reference"):
        out = armour_kernels.attention(q, q, q)
    torch.testing.assert_close(out, armour_kernels.attention(q, q, q, backend="reference"))


def test_environment_variable_sets_the_default_and_is_checked():
    result = _run("from armour_kernels import backend; print(backend.requested())",
                  ARMOUR_KERNELS_BACKEND="reference")
    assert result.returncode == 0 and result.stdout.strip() == "reference", result.stderr
    result = _run("import armour_kernels", ARMOUR_KERNELS_BACKEND="fastest")
    assert result.returncode != 0 and "backend must be one of" in result.stderr


def test_triton_on_cpu_tensors_outside_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        policy.select("attention", torch.device("cpu"), "triton")


# ----------------------------------------------------------------------------- empty in, empty out

EMPTY_SHAPES = [((0, 5, 2, 8), (0, 5, 2, 8)), ((2, 0, 2, 8), (2, 5, 2, 8)), ((2, 5, 0, 8), (2, 5, 0, 8)),
                ((2, 5, 2, 8), (2, 0, 2, 8))]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("shapes", EMPTY_SHAPES, ids=["B=0", "Nq=0", "H=0", "Nk=0"])
def test_attention_with_nothing_to_attend(shapes, backend):
    q_shape, k_shape = shapes
    q = torch.randn(*q_shape, requires_grad=True)
    k = torch.randn(*k_shape, requires_grad=True)
    v = torch.randn(*k_shape[:3], 6, requires_grad=True)
    out = armour_kernels.attention(q, k, v, backend=backend)
    assert out.shape == (*q_shape[:3], 6) and not out.any()  # zeros, like SDPA, when there are no keys
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.shape == t.shape and not t.grad.any()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_linear_attention_with_an_empty_batch(backend):
    q = torch.randn(0, 16, 2, 8)
    out = armour_kernels.nystrom_attention(q, q, q, num_landmarks=4, backend=backend)
    assert out.shape == (0, 16, 2, 8)
    out = armour_kernels.performer_attention(q, q, q, projection=torch.randn(12, 8), backend=backend)
    assert out.shape == (0, 16, 2, 8)


# ----------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
def test_scale_must_be_finite(scale):
    q = torch.randn(1, 4, 1, 8)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        armour_kernels.attention(q, q, q, scale=scale, backend="reference")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_table_index_out_of_range_is_refused_also_after_an_in_place_change(backend):
    table, q = torch.randn(2, 10), torch.randn(1, 4, 2, 8)
    index = torch.randint(0, 10, (4, 4))
    armour_kernels.attention(q, q, q, bias=table, bias_index=index, backend=backend)  # checked, cached
    index[1, 2] = 10  # in place: the version counter moves, the check runs again
    with pytest.raises(ValueError, match="outside the table"):
        armour_kernels.attention(q, q, q, bias=table, bias_index=index, backend=backend)
    index[1, 2] = -1
    with pytest.raises(ValueError, match="outside the table"):
        armour_kernels.attention(q, q, q, bias=table, bias_index=index, backend=backend)


@pytest.mark.skipif(not HAS_CPU, reason="the C++ extension is not built")
def test_table_index_out_of_range_is_refused_under_torch_compile():
    table, q = torch.randn(2, 10), torch.randn(1, 4, 2, 8)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def run(q, index):
        return armour_kernels.attention(q, q, q, bias=table, bias_index=index, backend="cpu")

    run(q, torch.randint(0, 10, (4, 4)))
    for bad in (10 ** 6, -5):
        index = torch.randint(0, 10, (4, 4))
        index[0, 0] = bad
        with pytest.raises(Exception, match="outside the table"):
            run(q, index)


def test_reference_backend_accumulates_half_precision_in_float32():
    x = torch.randn(2, 6, 1, 64, dtype=torch.float16) * 100  # float16 scores overflow: |q·k| ~ 1e5
    out = armour_kernels.attention(x, x, x, backend="reference")
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_reference_backend_takes_a_wider_bias():
    q = torch.randn(1, 4, 2, 8)
    bias = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    out = armour_kernels.attention(q, q, q, bias=bias, backend="reference")
    out.sum().backward()
    assert out.dtype == torch.float32 and bias.grad.dtype == torch.float64


@pytest.mark.parametrize("bad", [None, "x", 3])
def test_model_functions_want_a_module(bad):
    for fn in (armour_kernels.patch, armour_kernels.unpatch, armour_kernels.fold_batchnorm):
        with pytest.raises(TypeError, match="must be a torch.nn.Module"):
            fn(bad)


def test_fold_batchnorm_says_when_there_is_nothing_to_fold():
    with pytest.raises(TypeError, match="no BatchNorm to fold"):
        armour_kernels.fold_batchnorm(nn.Sequential(nn.Linear(4, 4)))
    pair = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    holder = nn.Sequential(pair).eval()
    armour_kernels.fold_batchnorm(holder)
    assert armour_kernels.fold_batchnorm(holder) is holder  # folded already: nothing to say


def test_patch_again_applies_the_new_backend():
    from python_ref.deit import Attention
    model = nn.Sequential(Attention(32, 2))
    armour_kernels.patch(model, backend="reference")
    assert model[0].backend == "reference"
    armour_kernels.patch(model, backend="triton")
    assert model[0].backend == "triton"
    armour_kernels.unpatch(model)
    assert type(model[0]) is Attention
