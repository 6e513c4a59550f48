"""`armour-bench models` runs end to end on CPU (LeViT-128S armour_plus, patched and folded, one
iteration on the reference backend) and writes its report."""
import argparse
import json

import pytest
import torch

pytest.importorskip("timm")
from armour_kernels.benchmarks import models  # noqa: E402


def test_models_benchmark_smoke(tmp_path):
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
