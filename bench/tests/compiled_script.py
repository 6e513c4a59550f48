"""Running a script in a fresh Python with TRITON_INTERPRET unset, so Triton really compiles (the
offline GPU compile tests lower every kernel to a cubin this way, without a GPU)."""
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]


def run_compiled_script(script: str, timeout: int) -> None:
    """Run `script`; it prints "compiled" when it got through."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH.parent), str(BENCH), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]
