"""The `armour-bench` main job end to end on tiny models, and its statistics on synthetic timings."""
import argparse
import io
import json
import sys
import time

import pytest
import torch

from armour_bench import cli
from armour_bench import main as main_job
from armour_bench import peers, record
from armour_bench.progress import Progress
from armour_bench.timing import Timing, interleaved, interleaved_ms, quantile, ratio, rounds_for


def _run(tmp_path, monkeypatch, *flags):
    monkeypatch.setenv("ARMOUR_BENCH_TINY", "1")
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        status = cli.main(["--no-compile", "--device", "cpu", "--cases", "1x1", "--out", str(out), *flags])
    finally:
        torch.set_num_threads(threads)
    return status, out


def test_main_job_tiny(tmp_path, monkeypatch, capfd):
    """capfd, not capsys: the profiler's library prints from C++, past sys.stderr."""
    status, out = _run(tmp_path, monkeypatch)
    printed = capfd.readouterr()
    assert status == 0, printed.out
    report = json.loads((out / "main-fp32.json").read_text())
    assert (out / "main-fp32.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| case | impl |" in (out / "main-fp32.md").read_text()
    assert report["tiny"] and report["device_type"] == "cpu"
    assert all(c["passed"] for c in report["checks"])
    env = report["environment"]
    assert env["command"].startswith("armour-bench") and env["onednn"] and "cpu_kernels_isa" in env
    rows = report["rows"]
    assert {(r["group"], r["model"]) for r in rows} == {("LeViT-128S", "LeViT-128S"), ("DeiT-Ti", "DeiT-Ti"),
                                                         ("DeiT-Ti", "Armour-Ti")}
    assert {r["impl"] for r in rows} == {"timm eager", "ours eager", "onnxruntime", "openvino"}
    # like for like: our kernels on timm's DeiT-Ti, the ONNX peers on Armour-Ti (exported decomposed)
    deit = {(r["impl"], r["model"]) for r in rows if r["group"] == "DeiT-Ti"}
    assert {("ours eager", "DeiT-Ti"), ("onnxruntime", "Armour-Ti"), ("openvino", "Armour-Ti")} <= deit
    assert ("timm eager", "Armour-Ti") not in deit
    for r in rows:
        assert r["threads"] == 1 and r["batch"] == 1
        assert r["compile_s"] >= 0  # every implementation's first-call seconds
        if r["impl"] in ("timm eager", "ours eager"):
            assert r["status"] == "ok" and r["n"] >= 5 and r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
    armour_onnx = next(r for r in rows if r["impl"] == "onnxruntime" and r["model"] == "Armour-Ti")
    assert armour_onnx["status"] == "ok", armour_onnx["status"]
    markdown = (out / "main-fp32.md").read_text()
    assert "first call s" in markdown and "same model on both sides" in markdown
    # nothing of its own that reads as a problem: no warning / error lines (the profiler's and the
    # CUDA probes' included) on a quiet run; a busy machine's load warning is the one allowed line
    quiet = [line for line in (printed.out + printed.err).splitlines()
             if ("warning" in line.lower() or "error" in line.lower()) and "machine is busy" not in line]
    assert not quiet, quiet
    ours = next(r for r in rows if r["impl"] == "ours eager" and r["model"] == "LeViT-128S")
    assert "vs_timm_eager" in ours and ours["overhead"]["ops"]  # the batch-1 profile of our eager call
    assert "Kernel checks" in printed.out and "[PASS]" in printed.out
    # not a terminal: plain progress lines naming the step that starts, no carriage returns
    assert "building ours eager" in printed.err and "\r" not in printed.err


def test_main_job_without_matplotlib_and_peers(tmp_path, monkeypatch, capsys):
    """Missing optional packages: one clear line each, the table and JSON still written, exit 0."""
    for module in ("matplotlib", "onnxruntime", "openvino"):
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    status, out = _run(tmp_path, monkeypatch)
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "plot skipped: matplotlib is not installed" in printed
    assert (out / "main-fp32.json").exists() and (out / "main-fp32.md").exists()
    assert not (out / "main-fp32.png").exists()
    rows = json.loads((out / "main-fp32.json").read_text())["rows"]
    for impl, package in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        statuses = {r["status"] for r in rows if r["impl"] == impl}
        assert statuses == {f"{package} not installed ({peers.INSTALL_HINT})"}, statuses
    assert "not installed" in printed and any(r["status"] == "ok" for r in rows)


def test_timm_compile_serves_its_frozen_graph(recwarn):
    """timm's LeViT fills its attention-bias cache at the first eval call; compiled on an empty cache
    the second call failed a guard and compiled an unfrozen graph (optimize's "compiled a new graph"
    warning). timm_compile warms the model first: the timed calls reuse the graph compiled at build."""
    from armour_kernels import deploy
    model = main_job._timm_model("levit_128s", tiny=True)
    example = torch.randn(1, 3, 32, 32)
    fn = peers.timm_compile(model, example, torch.float32)
    graphs = deploy._GRAPHS_COMPILED["unique_graphs"]
    with torch.no_grad():
        fn(example)
        fn(example)
    assert deploy._GRAPHS_COMPILED["unique_graphs"] == graphs
    assert not [w for w in recwarn if "compiled a new graph" in str(w.message)]


def test_same_model_ratio_only_where_ours_runs_several_models():
    def row(impl, model, ms):
        t = Timing([ms, ms * 1.01, ms * 0.99, ms, ms])
        return dict(group="DeiT-Ti", model=model, impl=impl, batch=1, threads=1, dtype="fp32", dtype_run="fp32",
                    status="ok", _timing=t, compile_s=1.0, **t.summary(), img_per_s=1e3 / t.median,
                    img_per_s_low=1e3 / t.q3, img_per_s_high=1e3 / t.q1)
    rows = [row("timm eager", "DeiT-Ti", 10.0), row("ours optimize", "Armour-Ti", 4.0),
            row("ours optimize", "DeiT-Ti", 5.0), row("onnxruntime", "Armour-Ti", 8.0)]
    main_job.add_ratios(rows)
    timm, headline, deit, onnx = rows
    assert timm["optimize_vs_this"]["ratio"] == pytest.approx(2.5)            # Armour-Ti against DeiT-Ti
    assert timm["same_model_optimize_vs_this"]["ratio"] == pytest.approx(2.0)  # DeiT-Ti on both sides
    assert onnx["same_model_optimize_vs_this"]["ratio"] == pytest.approx(2.0)  # Armour-Ti on both sides
    assert "same_model_optimize_vs_this" not in headline and "same_model_optimize_vs_this" not in deit
    assert "first call s" in main_job.table(rows)


def test_out_auto_is_this_devices_results_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(record, "RESULTS_ROOT", tmp_path / "results")
    assert record.resolve_out("auto", "cpu") == tmp_path / "results" / record.device_slug("cpu")
    assert record.device_slug("cpu").startswith("cpu-") and "auto" not in record.device_slug("cpu")


def _parse(*argv):
    parser = argparse.ArgumentParser()
    main_job.add_arguments(parser)
    return main_job.settings(parser.parse_args(["--device", "cpu", *argv]))


def test_settings_defaults(monkeypatch):
    monkeypatch.delenv("ARMOUR_BENCH_TINY", raising=False)
    s = _parse()
    assert s.dtypes == ["fp32"] and "timm compile" in s.impls and "ours optimize" in s.impls
    assert [b for b, _ in s.cases] == [1, 16, 64] and s.cases[0] == (1, 1) and s.budget_s > 1
    quick = _parse("--quick")
    assert "timm compile" not in quick.impls and "ours optimize" in quick.impls and quick.budget_s < s.budget_s
    assert "timm compile" in _parse("--quick", "--compile").impls
    assert not set(main_job.COMPILED) & set(_parse("--no-compile").impls)
    assert s.dynamic_batch(16, 2) and s.dynamic_batch(64, 2) and not s.dynamic_batch(1, 1)  # one compile for 16, 64
    assert s.compile_batched and not quick.compile_batched
    assert _parse("--cases", "1x1,64x2").cases == [(1, 1), (64, 2)]
    assert not _parse("--cases", "1x1,64x2").dynamic_batch(64, 2)  # alone at its thread count: static
    assert _parse("--batch-sizes", "1,8", "--threads", "1,2").cases == [(1, 1), (8, 1), (1, 2), (8, 2)]


# ----------------------------------------------------------------------------- statistics

def test_quantiles_and_timing_summary():
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.25) == 2.0
    t = Timing([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median, t.q1, t.q3, t.min, t.max) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert t.summary()["n"] == 5
    rates = t.per_second(10)
    assert rates["per_s_low"] < rates["per_s"] < rates["per_s_high"]
    assert rates["per_s"] == pytest.approx(10 / 3.0 * 1e3)


def test_ratio_spread_and_no_clear_difference():
    fast = Timing([10.0, 10.2, 9.8, 10.1, 9.9])
    slow = Timing([20.0, 20.4, 19.6, 20.2, 19.8])
    clear = ratio(fast, slow)
    assert clear.median == pytest.approx(2.0) and clear.clear and clear.low <= 2.0 <= clear.high
    assert clear.text().startswith("2.00x")
    # per-round ratios around 1: their IQR contains 1.0
    same = ratio(Timing([10.0, 10.5, 9.5, 10.2, 9.8]), Timing([10.3, 9.9, 9.7, 10.4, 9.6]))
    assert not same.clear and same.text().startswith("no clear difference")
    # a stalled round does not decide the median (the old main job reported "55.58x" off one stall)
    stalled = ratio(Timing([10.0, 10.0, 10.0, 10.0, 500.0]), Timing([10.0, 10.1, 9.9, 10.0, 10.0]))
    assert stalled.median == pytest.approx(1.0, abs=0.02) and not stalled.clear
    # unpaired samples: quartiles crossed (wider, still centred on the medians' ratio)
    unpaired = ratio(Timing([1.0, 1.0, 1.0]), Timing([2.0, 2.0, 2.0, 2.0]))
    assert unpaired.median == pytest.approx(2.0) and unpaired.clear


def test_rounds_follow_the_time_budget():
    assert rounds_for(2.0, 0.1) == 20
    assert rounds_for(2.0, 1.0) == 5          # at least min_rounds, even past the budget
    assert rounds_for(100.0, 0.001, max_rounds=300) == 300
    calls = []

    def sleeper(name, seconds):
        def fn():
            calls.append(name)
            time.sleep(seconds)
        return fn

    timings = interleaved({"a": sleeper("a", 0.004), "b": sleeper("b", 0.004)}, "cpu", budget_s=0.16, warmup=1)
    n = len(timings["a"].samples)
    assert n == len(timings["b"].samples) and 8 <= n <= 20, n   # ~0.16 s / 8 ms per round
    assert calls[:2] == ["a", "b"] and calls[2:4] == ["a", "b"] and calls[4:6] == ["b", "a"]  # rotating order
    assert timings["a"].median == pytest.approx(4.0, abs=3.0)
    assert set(interleaved_ms({"a": lambda: None}, "cpu", repeats=3)) == {"a"}  # the older interface


def test_table_marks_no_clear_difference():
    def row(impl, samples):
        t = Timing(samples)
        return dict(group="G", model="M", impl=impl, batch=1, threads=1, dtype="fp32", dtype_run="fp32",
                    status="ok", _timing=t, **t.summary(), img_per_s=1e3 / t.median,
                    img_per_s_low=1e3 / t.q3, img_per_s_high=1e3 / t.q1)
    rows = [row("timm eager", [10.0, 10.2, 9.8, 10.1, 9.9]), row("ours optimize", [5.0, 5.1, 4.9, 5.0, 5.0]),
            row("onnxruntime", [5.1, 4.9, 5.0, 5.2, 4.8]),
            dict(group="G", model="M", impl="openvino", batch=1, threads=1, dtype="fp32", dtype_run="fp32",
                 status="openvino not installed")]
    main_job.add_ratios(rows)
    text = main_job.table(rows)
    assert "2.00x" in text and "no clear difference" in text and "openvino not installed" in text
    assert rows[2]["optimize_vs_this"]["clear"] is False and rows[0]["optimize_vs_this"]["clear"] is True


def test_progress_plain_lines_and_warnings_above():
    stream = io.StringIO()
    with Progress(2, stream=stream) as progress:
        progress.step("compiling A")
        import warnings
        warnings.warn("something odd")
        progress.step("timing A")
    text = stream.getvalue()
    assert "[1/2]" in text and "compiling A" in text and "[2/2]" in text and "something odd" in text
    assert "\r" not in text


def test_busy_warning(monkeypatch):
    monkeypatch.setattr(record.os, "getloadavg", lambda: (64.0, 1.0, 1.0))
    assert "busy" in record.busy_warning()
    monkeypatch.setattr(record.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert record.busy_warning() is None
