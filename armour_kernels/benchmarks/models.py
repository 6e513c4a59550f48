"""`armour-bench models`: whole-model throughput of LeViT (and DeiT-Ti) with and without the kernels.

For every LeViT size and attention variant it times inference (images / s) of

    timm-eager         timm `levit_*` as built (BatchNorm unfolded)          regular only
    timm-reparam       timm.utils.model.reparameterize_model (timm's BN fuse) regular only
    timm-compile       torch.compile of the reparameterised timm model       regular only
    ref-folded         python_ref LeViT, BatchNorm folded, plain PyTorch     armour / armour_plus
    ref-compile        torch.compile of ref-folded                           armour / armour_plus
    patched-folded     armour_kernels.patch + fold_batchnorm (the fused path) every variant
    patched-compile    torch.compile of patched-folded (fuses what is left)  every variant

and, with --train, one SGD step (forward + backward + update, BatchNorm in training mode) of the
eager model (`*-train`) and the patched one (`patched-train`). `--deit` adds DeiT-Ti (timm eager /
compile) against Armour-Ti (python_ref armour, patched); `--vix` the Vision Xformers CIFAR-10 models
ViT / ViN / ViP, regular and Armour (python_ref eager against patched, 32×32 images, batch
`--vix-batch-size`, 64 by default; `--models ""` leaves LeViT out). GPU runs use AMP bf16 by default; CPU runs
fp32 or bf16 (`--dtype`), with `--threads` (the LeViT paper's CPU setting is `--threads 1
--batch-size 16`). Results: JSON + a markdown table (`--out PATH` writes PATH.json and PATH.md),
with the device, library versions and the command line.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time

import torch

LEVIT_MODELS = ("levit_128s", "levit_128", "levit_192", "levit_256", "levit_384")
VARIANTS = ("regular", "armour", "armour_plus")
# Vision Xformers label → python_ref vix_cifar attention.
VIX_MODELS = {"ViT": "softmax", "ViN": "nystrom", "ViP": "performer"}
INFERENCE_MODES = ("timm-eager", "timm-reparam", "timm-compile", "ref-folded", "ref-compile", "patched-folded",
                   "patched-compile")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=",".join(LEVIT_MODELS), help="comma-separated LeViT names")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated attention variants")
    parser.add_argument("--device", default="auto", help="cuda | cpu | auto (cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="compute dtype (GPU: AMP autocast; default bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 2048 on GPU, 64 on CPU")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations first")
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated subset of {','.join(INFERENCE_MODES)} (default: all but the "
                             "compile modes on CPU with --quick)")
    parser.add_argument("--backend", default="auto",
                        help="armour_kernels backend for patched models (auto: triton on GPU; on CPU the C++ "
                             "extension when built, else reference)")
    parser.add_argument("--train", action="store_true", help="also time a training step")
    parser.add_argument("--deit", action="store_true", help="also DeiT-Ti (timm) vs Armour-Ti (patched)")
    parser.add_argument("--vix", action="store_true",
                        help="also the CIFAR-10 ViT / ViN / ViP, regular and Armour (python_ref eager vs patched)")
    parser.add_argument("--vix-batch-size", type=int, default=64, help="batch of the --vix models")
    parser.add_argument("--quick", action="store_true",
                        help="LeViT-128S only, small batch, few iterations (a smoke run)")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")


# ----------------------------------------------------------------------------- setup

def _settings(args):
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    dtype = {"auto": "bf16" if gpu else "fp32"}.get(args.dtype, args.dtype)
    batch = args.batch_size or ((256 if gpu else 4) if args.quick else (2048 if gpu else 64))
    iters = args.iters or (3 if args.quick else (20 if gpu else 5))
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (5 if gpu else 2))
    modes = (args.modes.split(",") if args.modes else
             [m for m in INFERENCE_MODES if not (args.quick and not gpu and m.endswith("compile"))])
    unknown = set(modes) - set(INFERENCE_MODES)
    if unknown:
        raise SystemExit(f"armour-bench models: unknown mode(s) {sorted(unknown)}; choose from {INFERENCE_MODES}")
    models = ["levit_128s"] if args.quick and args.models == ",".join(LEVIT_MODELS) else \
        [name for name in args.models.split(",") if name]
    return device, dtype, batch, iters, warmup, modes, models, args.variants.split(",")


def _patch_backend(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "triton"
    from .._backend import cpu_has_op
    return "cpu" if cpu_has_op("attention") else "reference"


_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(device, dtype):
    if dtype == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=_TORCH_DTYPES[dtype])


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_interleaved(steps, device, iters, warmup):
    """Median seconds per call of each step, the steps timed in turn call by call.

    Interleaving spreads any drift of the machine's load (a shared CPU, GPU clocks) evenly over
    the modes being compared, instead of favouring whichever ran in a quiet moment.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    times = {mode: [] for mode in steps}
    for _ in range(iters):
        for mode, step in steps.items():
            start = time.perf_counter()
            step()
            _sync(device)
            times[mode].append(time.perf_counter() - start)
    return {mode: sorted(t)[len(t) // 2] for mode, t in times.items()}


def _timm_levit(name):
    import timm
    return timm.create_model(name, pretrained=False)


def _ref_levit(name, variant):
    from python_ref.registry import create_model
    return create_model(name, attention=variant)


# ----------------------------------------------------------------------------- measurements

def _inference_models(name, variant, modes, backend, device):
    """(mode, model) pairs for one LeViT size and variant; models built lazily."""
    from timm.utils.model import reparameterize_model

    import armour_kernels
    from python_ref.fold import fold_batchnorm as ref_fold

    def timm_model():
        return _timm_levit(name).eval().to(device)

    def ref_model():
        return ref_levit_cached().to(device)

    cache = {}

    def ref_levit_cached():
        if "ref" not in cache:
            cache["ref"] = _ref_levit(name, variant).eval()
        return copy.deepcopy(cache["ref"])

    def patched_folded():
        model = timm_model() if variant == "regular" else ref_model()
        return armour_kernels.fold_batchnorm(armour_kernels.patch(model, backend=backend))

    builders = {
        "timm-eager": lambda: timm_model(),
        "timm-reparam": lambda: reparameterize_model(timm_model()),
        "timm-compile": lambda: torch.compile(reparameterize_model(timm_model())),
        "ref-folded": lambda: ref_fold(ref_model()),
        "ref-compile": lambda: torch.compile(ref_fold(ref_model())),
        "patched-folded": lambda: patched_folded(),
        "patched-compile": lambda: torch.compile(patched_folded()),
    }
    for mode in modes:
        if mode.startswith("timm") and variant != "regular":
            continue  # timm has only the regular LeViT
        if mode.startswith("ref") and variant == "regular":
            continue  # the regular python_ref model is timm's, measured as timm-*
        yield mode, builders[mode]


def _inference_step(model, batch, device, dtype, size=224):
    x = torch.randn(batch, 3, size, size, device=device)  # autocast casts it, on CPU as on GPU

    def step():
        with torch.inference_mode(), _autocast(device, dtype):
            model(x)
    return step


def _train_step(model, batch, device, dtype, size=224, classes=1000):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, classes, (batch,), device=device)

    def step():
        with _autocast(device, dtype):
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out if torch.is_tensor(out) else out[0], target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _error_text(exc):
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _measure_group(rows, label, variant, entries, batch, device, dtype, iters, warmup):
    """Build every (mode, build, make_step) of one model and variant, then time them interleaved."""
    group, steps = [], {}
    for mode, build, make_step in entries:
        row = {"model": label, "variant": variant, "mode": mode, "batch": batch, "dtype": dtype}
        group.append(row)
        try:
            steps[mode] = make_step(build(), batch, device, dtype)
            steps[mode]()  # a failing configuration must not lose the rest of the table
        except Exception as exc:
            steps.pop(mode, None)
            row["error"] = _error_text(exc)
    try:
        seconds = _time_interleaved(steps, device, iters, warmup)
    except Exception as exc:
        seconds = {}
        for row in group:
            row.setdefault("error", _error_text(exc))
    for row in group:
        if row["mode"] in seconds:
            row.update(ms_per_batch=seconds[row["mode"]] * 1e3, img_per_s=batch / seconds[row["mode"]])
        rows.append(row)
        print(_row_text(row), flush=True)
    del steps
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row_text(row):
    if "error" in row:
        return f"{row['model']:>12} {row['variant']:>11} {row['mode']:>15}  ERROR {row['error']}"
    return (f"{row['model']:>12} {row['variant']:>11} {row['mode']:>15}  {row['img_per_s']:10.1f} img/s "
            f"{row['ms_per_batch']:9.2f} ms/batch")


def _deit_entries(backend, device, modes, train):
    """DeiT-Ti (timm, regular) against Armour-Ti (python_ref armour, patched)."""
    import timm

    import armour_kernels
    from python_ref.registry import create_model

    name = "deit_tiny_patch16_224"

    def timm_deit():
        return timm.create_model(name).eval().to(device)

    def armour_ti():
        return armour_kernels.patch(create_model(name, attention="armour").eval().to(device), backend=backend)

    regular = [("timm-eager", timm_deit, _inference_step)]
    if "timm-compile" in modes:
        regular.append(("timm-compile", lambda: torch.compile(timm_deit()), _inference_step))
    armour = [("patched", armour_ti, _inference_step)]
    if train:
        regular.append(("timm-train", timm_deit, _train_step))
        armour.append(("patched-train", armour_ti, _train_step))
    return [("regular", regular), ("armour", armour)]


def _vix_entries(backend, device, train):
    """(label, variant, entries) of the Vision Xformers on CIFAR-10: python_ref eager against patched."""
    import armour_kernels
    from python_ref.registry import create_model

    def infer(model, batch, device, dtype):  # CIFAR-10 images: 32×32 (the model's img_size)
        return _inference_step(model, batch, device, dtype, size=model.img_size)

    def learn(model, batch, device, dtype):
        return _train_step(model, batch, device, dtype, size=model.img_size, classes=10)

    for label, attention in VIX_MODELS.items():
        for variant in ("regular", "armour"):
            def eager(attention=attention, armour=variant == "armour"):
                return create_model("vix_cifar", attention=attention, armour=armour).eval().to(device)

            def patched(build=eager):
                return armour_kernels.patch(build(), backend=backend)

            entries = [("eager", eager, infer), ("patched", patched, infer)]
            if train:
                entries += [("eager-train", eager, learn), ("patched-train", patched, learn)]
            yield label, variant, entries


# ----------------------------------------------------------------------------- report

def _environment(device, backend, threads):
    import timm
    import triton
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
           or platform.machine(),
           "device_type": device.type, "torch": torch.__version__, "timm": timm.__version__,
           "triton": triton.__version__, "python": platform.python_version(), "patched_backend": backend,
           "threads": threads, "command": " ".join(["armour-bench"] + sys.argv[1:])}
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                env["device"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return env


def _markdown(env, rows):
    lines = [f"# armour-bench models — {env['device']}", "",
             "  ".join(f"{k}: `{v}`" for k, v in env.items()), "",
             "| model | variant | mode | batch | dtype | img/s | ms/batch | vs eager |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    # The baseline: timm eager (LeViT, DeiT), or python_ref eager where timm has no such model (ViX:
    # its regular variant, measured first, as timm's is the regular LeViT).
    eager = {}
    for r in rows:
        if r["mode"] in ("timm-eager", "timm-train", "eager", "eager-train") and "img_per_s" in r:
            eager.setdefault((r["model"], r["mode"].endswith("train")), r["img_per_s"])
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | {r['mode']} | {r['batch']} | {r['dtype']} | "
                         f"error: {r['error']} | | |")
            continue
        base = eager.get((r["model"], r["mode"].endswith("train")))
        ratio = f"{r['img_per_s'] / base:.2f}×" if base else ""
        lines.append(f"| {r['model']} | {r['variant']} | {r['mode']} | {r['batch']} | {r['dtype']} | "
                     f"{r['img_per_s']:.1f} | {r['ms_per_batch']:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    device, dtype, batch, iters, warmup, modes, models, variants = _settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = _patch_backend(args.backend, device)
    env = _environment(device, backend, torch.get_num_threads())
    print(f"# {env['device']} | torch {env['torch']} timm {env['timm']} | dtype {dtype} batch {batch} "
          f"| patched backend {backend}", flush=True)
    rows = []
    for name in models:
        for variant in variants:
            entries = [(mode, build, _inference_step)
                       for mode, build in _inference_models(name, variant, modes, backend, device)]
            if args.train:
                eager = (lambda n=name: _timm_levit(n).to(device)) if variant == "regular" else \
                    (lambda n=name, v=variant: _ref_levit(n, v).to(device))
                entries.append(("timm-train" if variant == "regular" else "ref-train", eager, _train_step))
                entries.append(("patched-train", _patched_trainable(eager, backend), _train_step))
            _measure_group(rows, name, variant, entries, batch, device, dtype, iters, warmup)
    if args.deit:
        for variant, entries in _deit_entries(backend, device, modes, args.train):
            _measure_group(rows, "deit_tiny", variant, entries, batch, device, dtype, iters, warmup)
    if args.vix:
        for label, variant, entries in _vix_entries(backend, device, args.train):
            _measure_group(rows, label, variant, entries, args.vix_batch_size, device, dtype, iters, warmup)
    report = {"environment": env, "settings": {"batch": batch, "dtype": dtype, "iters": iters, "warmup": warmup},
              "rows": rows}
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(report, f, indent=2)
        with open(args.out + ".md", "w") as f:
            f.write(_markdown(env, rows))
        print(f"wrote {args.out}.json and {args.out}.md")
    return 1 if rows and all("error" in r for r in rows) else 0


def _patched_trainable(build, backend):
    def patched():
        import armour_kernels
        return armour_kernels.patch(build(), backend=backend)
    return patched
