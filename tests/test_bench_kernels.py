"""`armour-bench kernels` runs end to end (one tiny shape, one repetition) and writes its report."""
import argparse
import json

from armour_kernels.benchmarks import kernels


def test_kernels_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "shapes", lambda quick, device: [
        ("tiny", 1, 9, 9, 2, 16, 16, ("v", "q"), None), ("tiny levit", 1, 4, 16, 2, 16, 32, ("v",), "table")])
    parser = argparse.ArgumentParser()
    kernels.add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--repeats", "1", "--out", str(tmp_path)])
    assert kernels.run(args) == 0
    report = json.loads((tmp_path / "kernels-cpu-fp32.json").read_text())
    assert {r["impl"] for r in report["rows"]} == {"armour_kernels", "sdpa", "python_ref"}
    assert all(r["status"] == "ok" for r in report["rows"] if r["impl"] != "armour_kernels")
    assert "| tiny |" in (tmp_path / "kernels-cpu-fp32.md").read_text()
