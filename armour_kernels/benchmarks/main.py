"""`armour-bench` with no subcommand: the main job — check the kernels, then time the models.

1. Detects the device (CUDA GPU, else CPU) and prints it with the versions.
2. Checks every fused kernel present on it against python_ref on small inputs (PASS / FAIL).
3. Times inference (eval, no grad) of DeiT-Ti vs Armour-Ti and LeViT-128S vs Armour-128S /
   Armour+-128S, each as
     eager            the timm model (the Armour ones: `armourize(timm model, backend=None)`),
     compile          torch.compile of the eager model,
     armour_kernels   the eager model patched onto the fused kernels (`armour_kernels.patch`),
   at a few batch sizes (LeViT with its BatchNorms folded in all three), with a progress bar.
4. Prints one table (images/s, and the fused path's speed-up over eager) and writes
   `results.json` and `throughput.png` (images/s vs batch size) into --out.

On a CPU without the C++ extension the armour_kernels rows say "unavailable". torch.compile
takes about a minute per model on a small CPU, so `--quick` on CPU leaves it out (say
`--compile` to keep it). ARMOUR_BENCH_TINY=1 (or --tiny) shrinks the models to 32×32 images and
one block per stage, which turns the whole job into a few-second smoke run (the tests use it).
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from . import record
from .kernels import DTYPES
from .timing import median_ms

DEFAULT_OUT = Path("bench/out")
IMPLS = ("eager", "compile", "armour_kernels")

# (family, label, timm base model, armourize variant or None)
MODELS = (
    ("DeiT", "DeiT-Ti", "deit_tiny_patch16_224", None),
    ("DeiT", "Armour-Ti", "deit_tiny_patch16_224", "armour"),
    ("LeViT", "LeViT-128S", "levit_128s", None),
    ("LeViT", "Armour-128S", "levit_128s", "armour"),
    ("LeViT", "Armour+-128S", "levit_128s", "armour_plus"),
)


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="fewer batch sizes and repetitions (and no torch.compile on CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for results.json and throughput.png")
    parser.add_argument("--batch-sizes", type=lambda s: [int(b) for b in s.split(",")], default=None,
                        help="comma-separated, e.g. 1,8,32 (default depends on device and --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per point (median)")
    compile_group = parser.add_mutually_exclusive_group()
    compile_group.add_argument("--compile", dest="compile", action="store_true", default=None,
                               help="include torch.compile (default: yes, except --quick on CPU)")
    compile_group.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (torch.set_num_threads); on a busy machine 1 avoids thread contention")
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("ARMOUR_BENCH_TINY", "0") not in ("", "0"),
                        help="tiny models (32×32 images, one block per stage): a seconds-long smoke run")


# ----------------------------------------------------------------------------- settings

def settings(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("armour-bench: --device cuda but CUDA is not available")
    dtype_name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    cpu = device.type == "cpu"
    if args.batch_sizes:
        batches = args.batch_sizes
    elif args.tiny:
        batches = [1, 2]
    elif cpu:  # no batch 1 where torch.compile runs: dynamo specialises it, a second compilation per model
        batches = [1, 4] if args.quick else [2, 8, 16]
    else:
        batches = [64, 256] if args.quick else [16, 64, 128, 256]
    repeats = args.repeats or (1 if args.tiny else (3 if cpu else (10 if args.quick else 30)))
    use_compile = args.compile if args.compile is not None else not (cpu and args.quick)
    impls = [i for i in IMPLS if use_compile or i != "compile"]
    return device, dtype_name, DTYPES[dtype_name], batches, repeats, impls


# ----------------------------------------------------------------------------- models

def build_eager(base, variant, tiny, device, dtype):
    """The timm model (or its armourized copy) in eval mode; LeViT with its BatchNorms folded."""
    import timm

    from ..convert import armourize
    from ..fold import fold_batchnorm

    kwargs = {}
    if tiny:
        kwargs = dict(img_size=32, depth=1) if base.startswith("deit") else dict(img_size=32, depth=(1, 1, 1))
    torch.manual_seed(0)
    model = timm.create_model(base, **kwargs)
    if variant is not None:
        model = armourize(model, variant, backend=None)
    model = model.eval()
    if base.startswith("levit"):
        fold_batchnorm(model)
    return model.to(device=device, dtype=dtype), (32 if tiny else 224)


def variants_of(eager, impl, device, dynamic):
    """The model to time for `impl`, or a string saying why there is none."""
    if impl == "eager":
        return eager
    if impl == "compile":  # dynamic batch: one compilation per model, not one per batch size
        return torch.compile(copy.deepcopy(eager), dynamic=dynamic)
    from ..backend import cpu_has_op
    from ..surgery import patch
    if device.type == "cpu" and not cpu_has_op("attention"):
        return "unavailable (C++ extension not built)"
    return patch(copy.deepcopy(eager), backend="auto")


# ----------------------------------------------------------------------------- progress

class Progress:
    """A one-line text progress bar on stderr (tqdm is not a dependency)."""

    def __init__(self, total, width=30, stream=None):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def step(self, label):
        self.done += 1
        filled = int(self.width * self.done / self.total)
        elapsed = time.perf_counter() - self.start
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {elapsed:5.0f}s {label:<45.45}")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


# ----------------------------------------------------------------------------- measuring

def measure(device, dtype, batches, repeats, impls, tiny, progress):
    rows = []
    for family, label, base, variant in MODELS:
        eager, size = build_eager(base, variant, tiny, device, dtype)
        params = sum(p.numel() for p in eager.parameters())
        for impl in impls:
            model = variants_of(eager, impl, device, dynamic=len(batches) > 1)
            for batch in batches:
                row = dict(family=family, model=label, impl=impl, batch=batch, params=params)
                if isinstance(model, str):
                    row.update(status=model)
                else:
                    row.update(_time_model(model, batch, size, device, dtype, repeats))
                rows.append(row)
                progress.step(f"{label} {impl} batch {batch}")
            del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _time_model(model, batch, size, device, dtype, repeats):
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)

    def forward():
        with torch.no_grad():
            model(x)

    try:
        ms = median_ms(forward, device, repeats)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return dict(status="out of memory")
    except Exception as error:  # report and go on with the other rows
        return dict(status=f"failed: {type(error).__name__}: {str(error).splitlines()[0][:100]}")
    return dict(status="ok", ms=ms, images_per_s=batch / ms * 1e3)


# ----------------------------------------------------------------------------- report

def table(rows, impls) -> str:
    """Models × batch sizes, images/s per implementation, and armour_kernels ÷ eager."""
    cells = {(r["model"], r["batch"], r["impl"]): r for r in rows}
    keys = list(dict.fromkeys((r["model"], r["batch"]) for r in rows))
    header = ["model", "params", "batch"] + [f"{i} img/s" for i in impls] + ["fused / eager"]
    lines = []
    for model, batch in keys:
        line = [model, f"{cells[(model, batch, impls[0])]['params'] / 1e6:.2f}M", str(batch)]
        for impl in impls:
            r = cells[(model, batch, impl)]
            line.append(f"{r['images_per_s']:.1f}" if r["status"] == "ok" else r["status"].split(" (")[0][:14])
        fused, eager = cells.get((model, batch, "armour_kernels")), cells[(model, batch, "eager")]
        ok = fused is not None and fused["status"] == "ok" and eager["status"] == "ok"
        line.append(f"{fused['images_per_s'] / eager['images_per_s']:.2f}x" if ok else "-")
        lines.append(line)
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
    fmt = lambda cols: "  ".join(c.rjust(w) if i > 0 else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines])


def plot(rows, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.5), squeeze=False)
    styles = {"eager": ":", "compile": "--", "armour_kernels": "-"}
    for ax, family in zip(axes[0], families):
        models = list(dict.fromkeys(r["model"] for r in rows if r["family"] == family))
        for color, model in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], models):
            for impl, style in styles.items():
                points = [(r["batch"], r["images_per_s"]) for r in rows
                          if r["model"] == model and r["impl"] == impl and r["status"] == "ok"]
                if points:
                    ax.plot(*zip(*points), style, marker="o", color=color, label=f"{model} {impl}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(family)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- driver

def run(args) -> int:
    from .checks import run_checks

    device, dtype_name, dtype, batches, repeats, impls = settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = record.environment(device)
    device_name = f"{env['device']} ({env['threads']} threads)" if device.type == "cpu" else env["device"]
    print(f"armour-bench: {device_name}, {dtype_name}; " + record.environment_lines(env)[1].strip())
    if "compile" not in impls:
        print("  (torch.compile left out: pass --compile to include it; it takes ~1 min per model on a small CPU)")

    print("\nKernel checks against python_ref (small inputs):")
    checks, missing = run_checks(device, dtype)
    for check in checks:
        print(check.line())
    for op in missing:
        print(f"  [SKIP] {op:<20} no fused kernel for {device.type} here")
    failed = [c for c in checks if not c.passed]

    print(f"\nTiming inference: batch sizes {batches}, median of {repeats}"
          f"{' (tiny models)' if args.tiny else ''}")
    progress = Progress(len(MODELS) * len(impls) * len(batches))
    rows = measure(device, dtype, batches, repeats, impls, args.tiny, progress)
    print()
    print(table(rows, impls))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(device=device_name, device_type=device.type, dtype=dtype_name, environment=env,
                  batch_sizes=batches, repeats=repeats, impls=impls, tiny=bool(args.tiny),
                  checks=[c.as_dict() for c in checks], kernels_missing=missing, rows=rows)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, out / "throughput.png", f"armour-bench: {device_name}, {dtype_name}")
    print(f"\nwrote {out / 'results.json'} and {out / 'throughput.png'}")
    if failed:
        print(f"{len(failed)} kernel check(s) FAILED", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="armour-bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
