"""The one way the benchmarks record where they ran and write their results.

`environment(device)`: device name, CPU model, thread count, library versions (torch, triton,
timm, onnxruntime, python, CUDA), the CPU kernels' ISA and the command line, as a dict that goes
into every JSON report and heads every markdown table (`environment_lines`).
`write_report(stem, report, markdown)`: writes stem.json and stem.md (folders created).
`results_dir(device)`: the committed results folder of this device, bench/results/<device-slug>/
(e.g. cpu-amd-epyc-2core, h100): one folder per device.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import re
import sys
from pathlib import Path

import torch

from .timing import device_type

RESULTS_ROOT = Path("bench/results")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_name(device) -> str:
    if device_type(device) == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def device_slug(device) -> str:
    """A short folder name for the device: "h100", "a100", "cpu-amd-epyc-2core"."""
    words = re.sub(r"\(r\)|\(tm\)|[^a-z0-9 ]", " ", device_name(device).lower()).split()
    if device_type(device) == "cuda":
        words = [w for w in words if w not in ("nvidia", "tesla", "geforce")]
        return words[0] if words else "cuda"
    return "-".join(["cpu"] + words[:2] + [f"{os.cpu_count()}core"])


def results_dir(device) -> Path:
    return RESULTS_ROOT / device_slug(device)


def _version(module: str):
    try:
        return importlib.import_module(module).__version__
    except Exception:  # not installed, or broken: the report says so instead of failing
        return None


def environment(device) -> dict:
    env = {"device": device_name(device), "device_type": device_type(device), "cpu": cpu_model(),
           "threads": torch.get_num_threads(), "python": platform.python_version(),
           "load_avg_1min": round(os.getloadavg()[0], 2)}  # other work on the machine while measuring
    for module in ("torch", "triton", "timm", "onnxruntime"):
        env[module] = _version(module)
    if torch.version.cuda:
        env["cuda"] = torch.version.cuda
    if device_type(device) == "cpu":
        from .. import cpu
        env["cpu_kernels_isa"] = cpu.isa()
    script = Path(sys.argv[0]).name if sys.argv else ""
    env["command"] = " ".join((["armour-bench"] if script in ("armour-bench", "cli.py") else [script]) + sys.argv[1:])
    return env


def environment_lines(env: dict) -> list[str]:
    """Markdown lines: device, versions, command."""
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "triton", "timm", "onnxruntime", "python", "cuda")
                         if env.get(k))
    device = env["device"] + (f" (CPU kernels: {env['cpu_kernels_isa']})" if env.get("cpu_kernels_isa") else "")
    load = f" (load average {env['load_avg_1min']} at the start)" if "load_avg_1min" in env else ""
    return [f"Device: {device}, {env['threads']} threads{load}  ", f"Versions: {versions}  ",
            f"Command: `{env['command']}`"]


def resolve_out(out, device):
    """`--out auto` means this device's results folder."""
    return results_dir(device) if out is not None and str(out) == "auto" else out


def write_report(stem, report: dict, markdown: str) -> None:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{stem}.md").write_text(markdown.rstrip("\n") + "\n")
    print(f"wrote {stem}.json and {stem}.md")


__all__ = ["environment", "environment_lines", "write_report", "results_dir", "device_slug", "device_name",
           "resolve_out"]
