"""`armour-bench export`: builds the seeded timm model, hands it to armour_kernels.export_package with
the options asked for, and checks the package it loads back against the eager model. The package
itself (compiled, loaded in a fresh Python) is the library's test: tests/models/test_export.py."""
from pathlib import Path

import pytest
import torch

import armour_kernels.export
from armour_bench import cli
from armour_bench.export import create_model, example_input

pytest.importorskip("timm")


def fake_export(calls, wrong=0.0):
    """export_package / load_package stand-ins: record the call, write a file, 'load' the eager model."""
    def export_package(model, x, path, **options):
        calls.append((model, tuple(x.shape), options))
        Path(path).write_bytes(b"pt2")
        return Path(path)

    def load_package(path):
        model = calls[-1][0]
        return lambda x: model(x) + wrong
    return export_package, load_package


@pytest.mark.parametrize("wrong, status", [(0.0, 0), (1.0, 1)])
def test_export_command(tmp_path, monkeypatch, capsys, wrong, status):
    calls = []
    export_package, load_package = fake_export(calls, wrong)
    monkeypatch.setattr(armour_kernels.export, "export_package", export_package)
    monkeypatch.setattr(armour_kernels.export, "load_package", load_package)
    package = tmp_path / "levit.pt2"
    assert cli.main(["export", "levit_128s", "--tiny", "--dtype", "bf16", "--batch-size", "2",
                     "--dynamic-batch", "--out", str(package)]) == status
    out = capsys.readouterr().out
    model, shape, options = calls[0]
    assert shape == (2, 3, 32, 32) and options == dict(dtype=torch.bfloat16, dynamic_batch=True, max_autotune=False)
    assert f"wrote {package}" in out and ("ok" in out) == (status == 0) and ("TOO LARGE" in out) == (status == 1)
    twin = create_model("levit_128s", tiny=True, img_size=32)  # the same seeded weights as the command's
    torch.testing.assert_close(twin(example_input(twin, 2, 32)), model(example_input(model, 2, 32)))
