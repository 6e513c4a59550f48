"""The one way the benchmarks record where they ran and write their results.

`environment(device)`: device name, CPU model and flags, thread count, load average, library
versions (torch, oneDNN, MKL, triton, timm, onnx, onnxruntime, openvino, python, CUDA), the CPU
kernels' ISA and the command line, as a dict that goes into every JSON report and heads every
markdown table (`environment_lines`).
`busy_warning()`: a line to print when the load average says other work shares the CPU.
`write_report(stem, report, markdown)`: writes stem.json and stem.md (folders created).
`results_dir(device)`: the committed results folder of this device, bench/results/<device-slug>/
(e.g. cpu-intel-xeon-amx-2core, h100): one folder per device.
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


def isa_tier(flags=None) -> str:
    """The widest CPU instruction set the kernels choose from: amx, avx512bf16, avx512, avx2 or base."""
    flags = set(cpu_flags() if flags is None else flags)
    for tier, needs in (("amx", {"amx_tile", "amx_bf16"}), ("avx512bf16", {"avx512f", "avx512_bf16"}),
                        ("avx512", {"avx512f"}), ("avx2", {"avx2", "fma"})):
        if needs <= flags:
            return tier
    return "base"


def device_slug(device) -> str:
    """A short folder name for the device: "h100", "cpu-amd-epyc-avx512bf16-2core", "cpu-intel-xeon-amx-2core".

    A CPU's name under a hypervisor is often generic ("Intel(R) Xeon(R) Processor"), so the folder
    also names the instruction set that decides which kernels run, and the core count."""
    words = re.sub(r"\(r\)|\(tm\)|[^a-z0-9 ]", " ", device_name(device).lower()).split()
    if device_type(device) == "cuda":
        words = [w for w in words if w not in ("nvidia", "tesla", "geforce")]
        return words[0] if words else "cuda"
    return "-".join(["cpu"] + words[:2] + [isa_tier(), f"{os.cpu_count()}core"])


def results_dir(device) -> Path:
    return RESULTS_ROOT / device_slug(device)


def _version(module: str):
    try:
        version = importlib.import_module(module).__version__
    except Exception:  # not installed, or broken: the report says so instead of failing
        return None
    return version.split("-")[0]  # openvino: "2026.4.1-22982-<hash>-releases/2026/4"


PEER_MODULES = ("timm", "onnx", "onnxruntime", "openvino")


def _built_with(pattern: str):
    """A version from torch's build configuration (oneDNN, MKL), or None."""
    match = re.search(pattern, torch.__config__.show())
    return match.group(1) if match else None


def cpu_flags() -> list[str]:
    """The CPU features that decide which kernels run (from /proc/cpuinfo; empty elsewhere)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [flag for flag in wanted if flag in flags]


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def busy_warning(threshold: float = 0.5) -> str | None:
    """A warning line when the 1-minute load average is above `threshold` per CPU (else None)."""
    load, cpus = load_average(), os.cpu_count() or 1
    if load is None or load <= threshold * cpus:
        return None
    return (f"warning: the machine is busy (load average {load:.1f} on {cpus} CPUs): other work shares the "
            "cores, so times are noisy and slower; the ratios (timed interleaved) hold better. Rerun on a quiet "
            "machine for published numbers.")


def environment(device, argv: list | None = None) -> dict:
    """argv: the `armour-bench` arguments (default: this process's command line)."""
    env = {"device": device_name(device), "device_type": device_type(device), "cpu": cpu_model(),
           "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(), "threads": torch.get_num_threads(),
           "python": platform.python_version(),
           "load_avg_1min": load_average()}  # other work on the machine while measuring
    for module in ("torch", "triton") + PEER_MODULES:
        env[module] = _version(module)
    env["onednn"] = _built_with(r"MKL-DNN v([\d.]+)")
    env["mkl"] = _built_with(r"Math Kernel Library Version ([\d.]+)")
    if torch.version.cuda:
        env["cuda"] = torch.version.cuda
    if device_type(device) == "cpu":
        from armour_kernels import cpu
        env["cpu_kernels_isa"] = cpu.isa()
    if argv is not None:
        env["command"] = " ".join(["armour-bench", *argv])
    else:
        script = Path(sys.argv[0]).name if sys.argv else ""
        env["command"] = " ".join((["armour-bench"] if script in ("armour-bench", "cli.py") else [script]) + sys.argv[1:])
    return env


def environment_lines(env: dict) -> list[str]:
    """Markdown lines: device, versions, command."""
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "onednn", "triton", *PEER_MODULES, "python", "cuda")
                         if env.get(k))
    device = env["device"] + (f" (CPU kernels: {env['cpu_kernels_isa']})" if env.get("cpu_kernels_isa") else "")
    if env.get("cpu_flags"):
        device += f", flags {' '.join(env['cpu_flags'])}"
    load = f" (load average {env['load_avg_1min']} at the start)" if env.get("load_avg_1min") is not None else ""
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
           "resolve_out", "busy_warning", "cpu_flags", "load_average"]
