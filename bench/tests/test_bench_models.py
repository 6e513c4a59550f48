"""`armour-bench models` runs end to end on CPU (LeViT-128S armour_plus, patched and folded; tiny
ViX models; one iteration on the reference backend) and writes its report."""
import argparse
import functools
import json

import pytest
import torch

import python_ref.registry
from armour_bench import models


def test_models_benchmark_smoke(tmp_path):
    pytest.importorskip("timm")
    parser = argparse.ArgumentParser()
    models.add_arguments(parser)
    out = str(tmp_path / "levit")
    args = parser.parse_args(["--models", "levit_128s", "--variants", "armour_plus", "--modes", "patched-folded",
                              "--batch-size", "1", "--iters", "1", "--warmup", "0", "--device", "cpu",
                              "--backend", "reference", "--out", out])
    assert models.run(args) == 0
    report = json.load(open(out + ".json"))
    assert report["rows"][0]["img_per_s"] > 0 and report["environment"]["torch"] == torch.__version__
    assert "| levit_128s | armour_plus | patched-folded |" in open(out + ".md").read()


def test_models_benchmark_vix_rows(tmp_path, monkeypatch):
    """`armour-bench models --vix` (no LeViT): eager and patched rows for ViT / ViN / ViP, regular and Armour."""
    tiny = functools.partial(python_ref.registry.create_model, img_size=4, depth=1, embed_dim=32, num_heads=2,
                             head_dim=16, mlp_dim=32, num_landmarks=8)
    monkeypatch.setattr(python_ref.registry, "create_model", tiny)  # tiny models: a smoke run
    parser = argparse.ArgumentParser()
    models.add_arguments(parser)
    out = str(tmp_path / "vix")
    args = parser.parse_args(["--models", "", "--vix", "--vix-batch-size", "1", "--iters", "1", "--warmup", "0",
                              "--device", "cpu", "--backend", "reference", "--out", out])
    assert models.run(args) == 0
    rows = json.load(open(out + ".json"))["rows"]
    assert [(r["model"], r["variant"], r["mode"]) for r in rows] == [
        (label, variant, mode) for label in ("ViT", "ViN", "ViP") for variant in ("regular", "armour")
        for mode in ("eager", "patched")]
    assert all(r["img_per_s"] > 0 and r["batch"] == 1 for r in rows)
    assert "| ViN | armour | patched | 1 | fp32 |" in open(out + ".md").read()
