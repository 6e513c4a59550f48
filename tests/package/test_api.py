"""The package as users meet it: public names, the backend policy, the model functions' argument checks.
Each op's own argument checks and empty inputs are tested with its family (tests/attention/, ...)."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import armour_kernels
from armour_kernels import backend as policy
from armour_kernels.backend import cpu_has_op
from helpers import ROOT

HAS_CPU = cpu_has_op("attention")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=300)


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


def test_every_public_name_resolves():
    """Each name of __all__, and the model functions where the README says they live: the
    rewrites in surgery/, optimize in deploy, both exports (AOTInductor and ONNX) in export."""
    for name in armour_kernels.__all__:
        assert getattr(armour_kernels, name) is not None, name
    from armour_kernels import deploy, export, surgery
    assert armour_kernels.export_package is export.export_package and armour_kernels.load_package is export.load_package
    assert armour_kernels.optimize is deploy.optimize and callable(export.to_onnx)
    assert armour_kernels.patch is surgery.patch
    assert armour_kernels.armourize.__module__ == "armour_kernels.surgery.armourize"
    assert armour_kernels.fold_batchnorm.__module__ == "armour_kernels.surgery.fold"


def test_importing_the_package_does_not_import_triton():
    result = _run("import sys, armour_kernels; print('triton' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


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


# ----------------------------------------------------------------------------- model functions

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
