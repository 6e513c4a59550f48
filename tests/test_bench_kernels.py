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


def test_kernels_benchmark_filters_and_ratios(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "shapes", lambda quick, device: [
        ("keep me", 2, 9, 9, 2, 16, 16, ("q",), None), ("drop me", 1, 9, 9, 2, 16, 16, ("v",), None)])
    parser = argparse.ArgumentParser()
    kernels.add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--repeats", "1", "--shapes", "keep", "--batch", "3",
                              "--impls", "sdpa,python_ref", "--out", str(tmp_path)])
    assert kernels.run(args) == 0
    rows = json.loads((tmp_path / "kernels-cpu-fp32.json").read_text())["rows"]
    assert {(r["shape"], r["B"], r["impl"]) for r in rows} == {("keep me", 3, "sdpa"), ("keep me", 3, "python_ref")}
    assert all(r["status"] == "ok" and r["fwd_vs_sdpa"] > 0 for r in rows)


def test_interleaved_timing_and_record(tmp_path):
    from armour_kernels.benchmarks import record, timing
    calls = []
    times = timing.interleaved_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, "cpu", 3,
                                  warmup=1)
    assert set(times) == {"a", "b"} and calls[2:] == ["a", "b"] * 3  # warm-up, then call by call in turn
    assert timing.median_ms(lambda: None, "cpu", 2) >= 0
    slug = record.device_slug("cpu")
    assert slug.startswith("cpu-") and slug.endswith("core") and " " not in slug
    env = record.environment("cpu")
    assert {"device", "cpu", "threads", "torch", "timm", "onnxruntime", "command"} <= set(env)
    record.write_report(tmp_path / "sub" / "r", {"environment": env}, "# t\n")
    assert json.loads((tmp_path / "sub" / "r.json").read_text())["environment"]["threads"] == env["threads"]
    assert record.environment_lines(env)[2].startswith("Command: `")


def test_onnxruntime_peer_matches_torch():
    import torch

    from armour_kernels.benchmarks.models import OnnxRuntimeModel
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Hardswish(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    out = OnnxRuntimeModel(model, x)(x)
    assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-5)
