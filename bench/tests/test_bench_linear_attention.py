"""`armour-bench linear_attention` runs end to end on CPU (one tiny shape, one round, two thread
counts) and writes its report."""
import argparse
import json

import pytest

from armour_kernels import cpu
from armour_bench import linear_attention

pytestmark = pytest.mark.skipif(not (cpu.has_op("nystrom_attention") and cpu.has_op("performer_attention")),
                                reason="armour_kernels._C not built with the Nyström / Performer kernels")


def test_linear_attention_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(linear_attention, "sweep", lambda *args: [("seq", 1, 40)])
    parser = argparse.ArgumentParser()
    linear_attention.add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--repeats", "1", "--threads", "1,2", "--landmarks", "8",
                              "--out", str(tmp_path)])
    assert linear_attention.run(args) == 0
    report = json.loads((tmp_path / "linear_attention-cpu-fp32.json").read_text())
    rows = report["rows"]
    assert {(r["family"], r["impl"]) for r in rows} == {(f, i) for f in ("nystrom", "performer")
                                                       for i in ("armour_kernels", "python_ref", "sdpa")}
    assert all(r["status"] == "ok" and r["fwd_ms"] > 0 for r in rows)
    ours = [r for r in rows if r["impl"] == "armour_kernels"]
    assert all(r["fwd_bwd_vs_python_ref"] > 0 and r["fwd_vs_sdpa"] > 0 for r in ours)
    assert {r["threads"] for r in rows} <= {1, 2} and report["targets"]
    assert "load_avg_1min_end" in report["environment"]
