"""The `armour-bench` main job end to end on tiny models: checks, timings, results.json, the plot."""
import json

import torch

from armour_kernels import cli
from armour_kernels.benchmarks import main as main_job


def test_main_job_tiny(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARMOUR_BENCH_TINY", "1")
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        status = cli.main(["--quick", "--no-compile", "--device", "cpu", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert status == 0, printed
    report = json.loads((out / "results.json").read_text())
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["tiny"] and report["device_type"] == "cpu"
    assert all(c["passed"] for c in report["checks"])
    models = {r["model"] for r in report["rows"]}
    assert models == {"DeiT-Ti", "Armour-Ti", "LeViT-128S", "Armour-128S", "Armour+-128S"}
    assert {r["impl"] for r in report["rows"]} == {"eager", "armour_kernels"}
    eager = [r for r in report["rows"] if r["impl"] == "eager"]
    assert all(r["status"] == "ok" and r["images_per_s"] > 0 for r in eager)
    assert "fused / eager" in printed and "[PASS]" in printed


def test_settings_defaults():
    parser = __import__("argparse").ArgumentParser()
    main_job.add_arguments(parser)
    device, dtype_name, _, batches, repeats, impls = main_job.settings(parser.parse_args(["--device", "cpu"]))
    assert dtype_name == "fp32" and "compile" in impls and max(batches) <= 16
    *_, impls = main_job.settings(parser.parse_args(["--device", "cpu", "--quick"]))
    assert "compile" not in impls
    *_, impls = main_job.settings(parser.parse_args(["--device", "cpu", "--quick", "--compile"]))
    assert "compile" in impls
