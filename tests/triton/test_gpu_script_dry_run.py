"""The GPU validation script runs end to end on the CPU (--dry-run), so it cannot rot unnoticed.

bench/gpu_sweep.py's steps run in the Triton interpreter at tiny shapes (the CUDA-only parts are
recorded as skipped) and the report is written; the shell driver bench/gpu_validation.sh parses
and runs its env and report steps in the same mode.
"""
import json
import os
import subprocess
import sys

import pytest

from helpers import HAS_CUDA, ROOT

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="the dry run is the CPU check; a GPU runs the script itself")


def test_every_step_runs_and_reports(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_sweep
    assert gpu_sweep.main(["all", "--dry-run", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == set(gpu_sweep.STEPS)
    assert not any("failed_step" in step or "missing" in step for step in results.values()), results
    assert results["edge"]["cases"] and results["configs"]["failed"] == 0
    assert {row["impl"] for row in results["timing"]["rows"]} >= {"armour_kernels", "armour_kernels no table grad"}
    assert {row["model"] for row in results["train"]["rows"]} == {"armour_kernels", "timm"}
    report = (tmp_path / "results.md").read_text()
    assert "Every config forced" in report and "Training step" in report


def test_shell_driver_dry_run(tmp_path):
    script = ROOT / "bench" / "gpu_validation.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, TRITON_INTERPRET="1", T_ENV="120", T_REPORT="120")
    result = subprocess.run(["bash", str(script), "--dry-run", "env", "tests", "report"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    dest = tmp_path / "cpu-dry-run"
    assert "tests: skipped" in (dest / "log.txt").read_text()
    assert json.loads((dest / "env.json").read_text())["interpreter"] is True
    assert (dest / "results.md").exists()


def test_script_speaks_of_the_gpu_and_the_project_only():
    for name in ("gpu_validation.sh", "gpu_sweep.py", "gpu_timing.py", "gpu_training.py", "edge_cases.py",
                 "every_config.py"):
        text = (ROOT / "bench" / name).read_text().lower()
        for word in ("lease", "budget_left", "device tool", "lent"):
            assert word not in text, (name, word)
