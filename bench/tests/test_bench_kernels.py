"""`armour-bench kernels` runs end to end (one tiny shape, one repetition) and writes its report."""
import argparse
import json

import pytest

from armour_bench import kernels


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
    from armour_bench import record, timing
    calls = []
    times = timing.interleaved_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, "cpu", 3,
                                  warmup=1)
    # warm-up, then call by call in turn, the order rotating from round to round (no position bias)
    assert set(times) == {"a", "b"} and calls[2:] == ["a", "b", "b", "a", "a", "b"]
    assert timing.median_ms(lambda: None, "cpu", 2) >= 0
    slug = record.device_slug("cpu")
    assert slug.startswith("cpu-") and slug.endswith("core") and " " not in slug
    env = record.environment("cpu")
    assert {"device", "cpu", "threads", "torch", "timm", "onnxruntime", "command"} <= set(env)
    record.write_report(tmp_path / "sub" / "r", {"environment": env}, "# t\n")
    assert json.loads((tmp_path / "sub" / "r.json").read_text())["environment"]["threads"] == env["threads"]
    assert record.environment_lines(env)[2].startswith("Command: `")


@pytest.mark.parametrize("peer", ["onnxruntime", "openvino"])
def test_onnx_peers_match_torch(peer):
    import torch

    from armour_bench import peers
    pytest.importorskip(peer)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Hardswish(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    onnx = peers.OnnxFile(model, x)
    build = peers.onnxruntime_session if peer == "onnxruntime" else peers.openvino_model
    out = build(onnx, x, torch.float32)(x)
    onnx.close()
    out = out[0] if peer == "openvino" else out
    assert torch.allclose(torch.as_tensor(out), model(x), atol=1e-5)


def test_summary_of_a_results_folder(tmp_path):
    from armour_bench import summary
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
    kernel_rows = [dict(row, impl="armour_kernels", fwd_ms=10.0, fwd_bwd_ms=20.0, fwd_vs_sdpa=2.0, fwd_bwd_vs_sdpa=1.4,
                        fwd_tflops=0.3),
                   dict(row, impl="sdpa", fwd_ms=20.0, fwd_bwd_ms=28.0, fwd_vs_sdpa=1.0, fwd_bwd_vs_sdpa=1.0)]
    kernels_report = {"environment": dict(env, command="armour-bench kernels"), "dtype": "fp32", "backend": "cpu",
                      "rows": kernel_rows}
    ratio = {"ratio": 1.2, "ratio_low": 1.1, "ratio_high": 1.3, "clear": True}
    case = dict(group="LeViT-128S", model="LeViT-128S", batch=1, threads=1, dtype="fp32", dtype_run="fp32")
    main = {"environment": dict(env, command="armour-bench"), "cases": ["1x1"], "impls": [], "rows": [
        dict(case, impl="ours optimize", img_per_s=120.0), dict(case, impl="openvino", img_per_s=100.0,
                                                                optimize_vs_this=ratio),
        dict(case, impl="ours eager", img_per_s=90.0, vs_timm_eager=dict(ratio, ratio=0.9, ratio_high=0.95))]}
    (tmp_path / "models-fp32.json").write_text(json.dumps(models))
    (tmp_path / "kernels-cpu-fp32.json").write_text(json.dumps(kernels_report))
    linear = {"environment": dict(env, command="armour-bench linear_attention"), "rows": [], "crossover": {},
              "targets": {"nystrom 2 thread(s)": {"fwd+bwd >= 1.5x": "met (lowest 2.30x)"}}}
    (tmp_path / "main-fp32.json").write_text(json.dumps(main))
    (tmp_path / "linear_attention-cpu-fp32.json").write_text(json.dumps(linear))
    text = summary.summary(tmp_path)
    assert "| LeViT-128S vs OpenVINO | fp32, batch 1, 1 thr | 120.0 | 100.0 | 1.20× (1.10–1.30) | 1.00× | yes |" in text
    assert "| LeViT-128S vs onnxruntime | fp32, batch 1, 1 thr | | | not measured | 1.00× | – |" in text
    assert "| LeViT-128S eager patched vs timm eager | fp32, batch 1, 1 thr | 90.0 | | 0.90× (1.10–0.95) |" in text
    assert "| LeViT-128S fp32 vs onnxruntime fp32 | 2 thr, batch 64 | 200.0 | 150.0 | 1.33× | 1.00× | yes |" in text
    assert "| Armour-Ti fp32 vs timm DeiT-Ti eager | 2 thr, batch 64 | 45.0 | 40.0 | 1.12× | 1.25× | no |" in text
    assert "| fp32 | 2 | DeiT-Ti (64, 197×197, 3, 64/64) | v | none | 10.0 / 20.0 | 2.00× | 0.300 | 20.0 / 28.0 " \
           "| 1.40× | yes / no |" in text
    assert "| nystrom 2 thread(s) | fwd+bwd >= 1.5x | met (lowest 2.30x) |" in text
    assert "`armour-bench kernels`" in text and "`armour-bench models`" in text
    assert text.count("- `armour-bench kernels`") == 1


def test_linear_act_engine_table(tmp_path, monkeypatch):
    """`armour-bench linear_act --tables engines`: each engine timed, the choice and whether it was the faster."""
    from armour_bench import linear_act
    monkeypatch.setattr(linear_act, "ENGINE_LAYERS", (("tiny", 4, 16, 8, "hardswish"),))
    monkeypatch.setattr(linear_act, "ENGINE_BATCHES", (1,))
    parser = argparse.ArgumentParser()
    linear_act.add_arguments(parser)
    args = parser.parse_args(["--tables", "engines", "--dtypes", "fp32", "--repeats", "1", "--out", str(tmp_path)])
    assert linear_act.run(args) == 0
    (row,) = json.loads((tmp_path / "linear_act-cpu.json").read_text())["engines"]
    assert row["chose"] == "aten" and {"aten", "auto"} <= set(row["ms"]) and 0 < row["chose_vs_fastest"] <= 1
    assert "| tiny | 1 |" in (tmp_path / "linear_act-cpu.md").read_text()


def test_linear_act_stem_table(tmp_path, monkeypatch):
    """`armour-bench linear_act --tables stem`: image_conv next to the copy + oneDNN convolution, in its own
    report (the Linear tables' report is left alone)."""
    from armour_bench import linear_act
    from armour_kernels import cpu
    if not cpu.has_op("image_conv"):
        pytest.skip("the C++ extension is not built")
    monkeypatch.setattr(linear_act, "STEM_BATCHES", (1,))
    monkeypatch.setattr(linear_act, "STEM_SIZE", 32)
    parser = argparse.ArgumentParser()
    linear_act.add_arguments(parser)
    args = parser.parse_args(["--tables", "stem", "--dtypes", "fp32", "--repeats", "1", "--out", str(tmp_path)])
    assert linear_act.run(args) == 0
    (row,) = json.loads((tmp_path / "image_conv-cpu.json").read_text())["rows"]
    assert set(row["ms"]) == {"image_conv", "channels-last + oneDNN", "F.conv2d + hardswish"}
    assert "| 1 | fp32 |" in (tmp_path / "image_conv-cpu.md").read_text()
    assert not (tmp_path / "linear_act-cpu.json").exists()


@pytest.mark.parametrize("flags, tier", [(["avx2", "fma"], "avx2"), (["avx2", "fma", "avx512f"], "avx512"),
                                         (["avx512f", "avx512_bf16"], "avx512bf16"),
                                         (["avx512f", "avx512_bf16", "amx_tile", "amx_bf16"], "amx"), ([], "base")])
def test_results_folder_names_the_instruction_set(flags, tier):
    from armour_bench import record
    assert record.isa_tier(flags) == tier
    assert record.device_slug("cpu").startswith("cpu-") and record.isa_tier() in record.device_slug("cpu")


def test_ab_switch_table(tmp_path, monkeypatch):
    """`armour-bench ab`: a served model timed with a switch on and off by turns; medians, IQRs and the
    per-round ratio in JSON and markdown (a stand-in switch and a tiny DeiT, so it runs on any CPU)."""
    import contextlib

    import timm

    from armour_bench import ab
    from armour_kernels import cpu
    if not cpu.has_op("dense"):
        pytest.skip("the C++ extension is not built")
    flips = []
    monkeypatch.setitem(ab.SWITCHES, "dense_amx", lambda on: flips.append(on) or contextlib.nullcontext())
    monkeypatch.setattr(ab, "_available", lambda switch: None)
    monkeypatch.setattr(ab, "IMAGE_SIZE", 32)
    monkeypatch.setattr(ab, "_model", lambda name: timm.create_model("deit_tiny_patch16_224", img_size=32,
                                                                     depth=1).eval())
    parser = argparse.ArgumentParser()
    ab.add_arguments(parser)
    args = parser.parse_args(["--models", "DeiT-Ti", "--dtype", "fp32", "--budget", "0.2", "--out", str(tmp_path)])
    assert ab.run(args) == 0
    (row,) = json.loads((tmp_path / "ab-dense_amx-fp32.json").read_text())["rows"]  # not the switch's own dtype
    assert row["model"] == "DeiT-Ti" and row["rounds"] >= 1 and row["on_ms"] > 0 and row["off_ms"] > 0
    assert True in flips and False in flips
    assert "| DeiT-Ti | fp32 | 1 | 1 |" in (tmp_path / "ab-dense_amx-fp32.md").read_text()
    assert ab.report_name("dense_amx", "bf16") == "ab-dense_amx"
    assert ab.report_name("dense_f32", "fp32") == "ab-dense_f32"
