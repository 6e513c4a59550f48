"""python_ref is the test oracle, not a run-time dependency: the kernels, their launchers and the ops
import and run with python_ref unimportable."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from armour_kernels import cpu
from helpers import ROOT


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_kernel_code_never_imports_python_ref():
    """cpu/ and triton/ (the kernels and their launchers) and ops/ import with python_ref unimportable."""
    code = ("import sys; sys.modules['python_ref'] = None\n"
            "import armour_kernels.cpu.attention, armour_kernels.cpu.linear_act\n"
            "import armour_kernels.triton.attention, armour_kernels.triton.linear_act\n"
            "import armour_kernels.ops.attention, armour_kernels.ops.linear_act\n"
            "print('ok')")
    result = _run(code, TRITON_INTERPRET="1")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# Runs the C++ kernels (in a child Python), so .ci/sanitize runs it too.
@pytest.mark.cpu_kernels
@pytest.mark.skipif(not (cpu.has_op("nystrom_attention") and cpu.has_op("performer_attention")),
                    reason="armour_kernels._C not built with the Nyström / Performer kernels")
def test_cpu_linear_attention_runs_without_python_ref():
    """No module of armour_kernels/cpu imports python_ref, and forward + backward of the Nyström and
    Performer ops run on the CPU kernels with python_ref made unimportable."""
    for path in Path(cpu.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "python_ref" for n in names), f"{path.name} imports python_ref"
    script = """
import sys, torch
import armour_kernels
for name in [m for m in sys.modules if m == "python_ref" or m.startswith("python_ref.")]:
    del sys.modules[name]
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "python_ref":
            raise ImportError("python_ref imported at run time by " + name)
sys.meta_path.insert(0, Block())
q, k, v = (torch.randn(1, 21, 2, 16, requires_grad=True) for _ in range(3))
conv = torch.randn(2, 1, 5, 1, requires_grad=True)
proj = torch.randn(12, 16)
for mode in ("clean", "seed"):
    for value in ("v", "q"):
        vv = v if value == "v" else None
        armour_kernels.nystrom_attention(q, k, vv, num_landmarks=4, mode=mode, value=value, conv_weight=conv,
                                         backend="cpu").sum().backward()
        for kernel in ("softmax", "relu"):
            armour_kernels.performer_attention(q, k, vv, projection=proj, kernel=kernel, mode=mode, value=value,
                                               backend="cpu").sum().backward()
print("ok")
"""
    result = _run(script)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
