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


def test_summary_of_a_results_folder(tmp_path):
    from armour_kernels.benchmarks import summary
    env = {"device": "Some CPU", "threads": 2, "torch": "x", "command": "armour-bench models"}

    def model_row(model, variant, mode, img_per_s):
        return {"model": model, "variant": variant, "mode": mode, "img_per_s": img_per_s}
    models = {"environment": env, "settings": {"dtype": "fp32", "batch": 64, "patched_backend": "cpu"}, "rows": [
        model_row("levit_128s", "regular", "timm-eager", 100.0),
        model_row("levit_128s", "regular", "onnxruntime", 150.0),
        model_row("levit_128s", "regular", "timm-compile", 120.0),
        model_row("levit_128s", "regular", "patched-folded", 200.0),
        model_row("deit_tiny", "regular", "timm-eager", 40.0), model_row("deit_tiny", "armour", "patched", 45.0)]}
    row = dict(shape="DeiT-Ti", B=64, Nq=197, Nk=197, H=3, Dk=64, Dv=64, value="v", bias="none", status="ok")
    kernel_rows = [dict(row, impl="armour_kernels", fwd_ms=10.0, fwd_bwd_ms=20.0, fwd_vs_sdpa=2.0, fwd_bwd_vs_sdpa=1.4),
                   dict(row, impl="sdpa", fwd_ms=20.0, fwd_bwd_ms=28.0, fwd_vs_sdpa=1.0, fwd_bwd_vs_sdpa=1.0)]
    kernels_report = {"environment": dict(env, command="armour-bench kernels"), "dtype": "fp32", "backend": "cpu",
                      "rows": kernel_rows}
    (tmp_path / "models-fp32.json").write_text(json.dumps(models))
    (tmp_path / "kernels-cpu-fp32.json").write_text(json.dumps(kernels_report))
    text = summary.summary(tmp_path)
    assert "| LeViT-128S fp32 vs onnxruntime fp32 | 2 thr, batch 64 | 200.0 | 150.0 | 1.33× | 1.00× | yes |" in text
    assert "| Armour-Ti fp32 vs timm DeiT-Ti eager | 2 thr, batch 64 | 45.0 | 40.0 | 1.12× | 1.25× | no |" in text
    assert "| 2.00× | 20.0 / 28.0 | 1.40× | yes / no |" in text
    assert "`armour-bench kernels`" in text and "`armour-bench models`" in text
