"""Export of patched models: torch.export keeps the fused custom op; an AOTInductor package of the
optimized model runs in a fresh Python; ONNX runs in onnxruntime."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import python_ref
from armour_kernels import armourize, export_package, fold_batchnorm, patch
from armour_kernels.backend import cpu_has_op
from armour_kernels.export import decomposed, to_onnx
from armour_kernels.nn.attention import ArmourAttention
from helpers import ROOT

# The fused path that runs here: the C++ kernels when built, else Triton in the interpreter.
BACKEND = "auto" if cpu_has_op("attention") else "triton"


def small_deit(attention="armour", depth=2):
    torch.manual_seed(0)
    return python_ref.create_model("deit_tiny_patch16_224", attention=attention, img_size=32, patch_size=8,
                                   depth=depth, num_classes=7).eval()


def small_levit(attention="armour"):
    torch.manual_seed(0)
    model = python_ref.create_model("levit_128s", attention=attention, img_size=32, depth=(1, 1, 1),
                                    num_classes=7).eval()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "attention_biases"):
                m.attention_biases.normal_()
    return model


@pytest.mark.parametrize("family", ["deit", "levit"])
def test_torch_export_keeps_custom_op(family):
    model = patch(small_deit() if family == "deit" else fold_batchnorm(small_levit()), backend=BACKEND)
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,))
    graph = str(program.graph)
    assert "armour_kernels.attention" in graph
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)
        if BACKEND == "cpu":  # exported for inference: the C++ dispatcher op
            inference = torch.export.export(model, (x,))
            assert "armour_kernels.attention.default" in str(inference.graph)
            torch.testing.assert_close(inference.module()(x), model(x), atol=1e-5, rtol=1e-5)


def _python(args, **kwargs):
    """Run a fresh Python (without the Triton interpreter switch) with this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


LOAD_AND_COMPARE = """
import sys, torch
import armour_kernels  # registers the custom ops the package calls
x, expected, tolerance = torch.load(sys.argv[1])
run = armour_kernels.load_package(sys.argv[2])
got = run(x)
error = (got.float() - expected).abs().max().item()
print("max error", error)
assert got.shape == expected.shape and error <= tolerance, (error, tolerance)
print("ok")
"""


def tiny_timm_levit():
    """timm LeViT-128S, one block per stage, 32×32 images: compiles in seconds."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("levit_128s", img_size=32, depth=(1, 1, 1)).eval()


@pytest.mark.skipif(not cpu_has_op("attention"), reason="needs the C++ extension (CPU kernels)")
@pytest.mark.parametrize("family,dtype", [("timm_levit", torch.float32), ("armour_ti", torch.bfloat16)])
def test_export_package_loads_in_a_fresh_process(tmp_path, family, dtype):
    """export_package writes the optimized model (folded, fused, cast) as an AOTInductor package; a new
    Python, with armour_kernels imported and nothing else, loads it and gets the eager model's outputs."""
    model = tiny_timm_levit() if family == "timm_levit" else small_deit(depth=1)
    x = torch.randn(2, 3, 32, 32)
    package = export_package(model, x, tmp_path / f"{family}.pt2", dtype=dtype)
    assert package == tmp_path / f"{family}.pt2" and package.exists()
    with torch.no_grad():
        expected = model(x)
    tolerance = (2e-4 if dtype == torch.float32 else 8e-2) * max(1.0, expected.abs().max().item())
    torch.save((x, expected, tolerance), tmp_path / "io.pt")
    script = tmp_path / "load.py"
    script.write_text(LOAD_AND_COMPARE)
    assert "ok" in _python([str(script), str(tmp_path / "io.pt"), str(package)], timeout=300)


def _run_onnx(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("family", ["deit", "levit_armour", "levit_armour_plus", "deit_from_timm"])
def test_onnx_matches_pytorch(tmp_path, family):
    if family == "deit":
        model = patch(small_deit(), backend=BACKEND)
    elif family == "deit_from_timm":
        timm = pytest.importorskip("timm")
        torch.manual_seed(0)
        source = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=7)
        model = armourize(source, backend=BACKEND).eval()
    else:
        model = patch(fold_batchnorm(small_levit(family.removeprefix("levit_"))), backend=BACKEND)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    path = to_onnx(model, x, tmp_path / "model.onnx")
    np.testing.assert_allclose(_run_onnx(path, x), expected.numpy(), atol=1e-4, rtol=1e-4)
    x3 = torch.randn(3, 3, 32, 32)  # dynamic batch
    with torch.no_grad():
        np.testing.assert_allclose(_run_onnx(path, x3), model(x3).numpy(), atol=1e-4, rtol=1e-4)


def test_onnx_leaves_model_alone_and_checks_inputs(tmp_path):
    model = patch(small_deit(), backend=BACKEND).train()
    modules = list(model.modules())
    to_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "m.onnx")
    assert model.training and list(model.modules()) == modules
    with decomposed(model):
        assert all(m.backend == "reference" for m in model.modules() if hasattr(m, "backend"))
    assert all(m.backend == BACKEND for m in model.modules() if hasattr(m, "backend"))
    fused_only = ArmourAttention(32, 2, backend=BACKEND).eval()  # built directly: no original to unpatch to
    tokens = torch.randn(2, 5, 32)
    path = to_onnx(fused_only, tokens, tmp_path / "attn.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(_run_onnx(path, tokens), fused_only(tokens).numpy(), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="example"):
        to_onnx(model, [torch.randn(1, 3, 32, 32)], tmp_path / "m.onnx")
