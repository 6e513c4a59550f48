"""`armour-bench models`: whole-model throughput of LeViT (and DeiT-Ti) with and without the kernels.

For every LeViT size and attention variant it times inference (images / s) of

    timm-eager         timm `levit_*` as built (BatchNorm unfolded)          regular only
    timm-reparam       timm.utils.model.reparameterize_model (timm's BN fuse) regular only
    timm-compile       torch.compile (inductor, freezing) of the reparameterised regular only
                       timm model
    onnxruntime        the reparameterised timm model exported to ONNX, run  regular only
                       by onnxruntime's CPU provider (intra-op threads = --threads; always fp32)
    openvino           that ONNX model in OpenVINO (CPU), precision hint     regular only
                       (f32 / bf16 = --dtype) and INFERENCE_NUM_THREADS set explicitly
    ref-folded         python_ref LeViT, BatchNorm folded, plain PyTorch     armour / armour_plus
    ref-compile        torch.compile of ref-folded                           armour / armour_plus
    patched-folded     armour_kernels.patch + fold_batchnorm (the fused path) every variant
    patched-compile    torch.compile of patched-folded (fuses what is left)  every variant
    optimize           armour_kernels.optimize (folded, fused, weights cast  every variant
                       to --dtype, torch.compile with freezing)

All modes and variants of one model are timed interleaved, round by round, for a time budget
(timing.interleaved), so the ratios between them are fair on a shared machine; the table gives
each ratio with the IQR of its per-round ratios ("no clear difference" when that contains 1.0).
The peers (onnxruntime, openvino) are optional: without their package the row says so. And, with --train, one SGD step (forward + backward + update, BatchNorm in training mode) of the
eager model (`*-train`) and the patched one (`patched-train`). `--deit` adds DeiT-Ti (timm eager /
compile / onnxruntime / openvino) against Armour-Ti (python_ref armour, patched and optimize). GPU runs use AMP bf16 by default; CPU runs
fp32 or bf16 (`--dtype`), with `--threads` (the LeViT paper's CPU setting is `--threads 1
--batch-size 16`). Results: JSON + a markdown table (`--out PATH` writes PATH.json and PATH.md),
with the device, library versions and the command line.
"""
from __future__ import annotations

import argparse
import copy
import tempfile

import torch

from . import record
from . import peers as peer_impls
from .timing import interleaved, ratio

LEVIT_MODELS = ("levit_128s", "levit_128", "levit_192", "levit_256", "levit_384")
VARIANTS = ("regular", "armour", "armour_plus")
INFERENCE_MODES = ("timm-eager", "timm-reparam", "timm-compile", "onnxruntime", "openvino", "ref-folded",
                   "ref-compile", "patched-folded", "patched-compile", "optimize")
PEERS = ("timm-eager", "timm-compile", "onnxruntime", "openvino")  # the markdown table's ratio columns
COMPILED_MODES = ("timm-compile", "ref-compile", "patched-compile", "optimize")
# Vision Xformers label → python_ref vix_cifar attention (`--vix`).
VIX_MODELS = {"ViT": "softmax", "ViN": "nystrom", "ViP": "performer"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=",".join(LEVIT_MODELS), help="comma-separated LeViT names")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated attention variants")
    parser.add_argument("--device", default="auto", help="cuda | cpu | auto (cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="compute dtype (GPU: AMP autocast; default bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 2048 on GPU, 64 on CPU")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--iters", type=int, default=None, help="at least this many timed rounds per measurement")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed rounds per mode (default 2 on CPU, 1 on GPU, 0.5 with --quick; "
                             "0 with --iters: exactly that many rounds)")
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
    parser.add_argument("--out", default=None,
                        help="write OUT.json and OUT.md (`auto`: "
                             "bench/results/<device>/models-<dtype>-threads<T>-batch<B>)")


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
             [m for m in INFERENCE_MODES if not (args.quick and not gpu and m in COMPILED_MODES)
              and not (gpu and m in ("onnxruntime", "openvino"))])
    unknown = set(modes) - set(INFERENCE_MODES)
    if unknown:
        raise SystemExit(f"armour-bench models: unknown mode(s) {sorted(unknown)}; choose from {INFERENCE_MODES}")
    models = ["levit_128s"] if args.quick and args.models == ",".join(LEVIT_MODELS) else \
        [name for name in args.models.split(",") if name]
    budget = args.budget if args.budget is not None else (
        0.0 if args.iters else (0.5 if args.quick else (1.0 if gpu else 2.0)))  # --iters alone: exactly that many
    return device, dtype, batch, (iters, budget), warmup, modes, models, args.variants.split(",")


def _patch_backend(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "triton"
    from armour_kernels.backend import cpu_has_op
    return "cpu" if cpu_has_op("attention") else "reference"


_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(device, dtype):
    if dtype == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=_TORCH_DTYPES[dtype])


def _timm_levit(name):
    import timm
    return timm.create_model(name, pretrained=False)


def _ref_levit(name, variant):
    from python_ref.registry import create_model
    return create_model(name, attention=variant)


# ----------------------------------------------------------------------------- measurements

def _onnx_peer(build, batch, which):
    """A builder of the onnxruntime / openvino callable on the ONNX export of `build()` (fp32, static batch)."""
    def make(dtype="fp32"):
        example = torch.randn(batch, 3, 224, 224)
        onnx = peer_impls.OnnxFile(build().float().cpu(), example)
        try:
            if which == "onnxruntime":
                return peer_impls.onnxruntime_session(onnx, example, torch.float32)
            return peer_impls.openvino_model(onnx, example, _TORCH_DTYPES[dtype])
        finally:
            onnx.close()  # the sessions hold the model in memory
    return make


def _optimized(build, batch, device):
    """A builder of armour_kernels.optimize(build()) for the run's dtype."""
    def make(dtype="fp32"):
        import armour_kernels
        return armour_kernels.optimize(build(), torch.randn(batch, 3, 224, 224, device=device),
                                       dtype=_TORCH_DTYPES[dtype])
    return make


def _freezing_compile(model, device):
    """torch.compile with freezing; compiled on first call (under the options, see deploy.OptimizedModel)."""
    from armour_kernels.deploy import OptimizedModel, inductor_options
    return OptimizedModel(model, inductor_options(device), fullgraph=False)


def _inference_models(name, variant, modes, backend, device, batch):
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
        "timm-compile": lambda: _freezing_compile(reparameterize_model(timm_model()), device),
        "ref-folded": lambda: ref_fold(ref_model()),
        "ref-compile": lambda: torch.compile(ref_fold(ref_model())),
        "patched-folded": lambda: patched_folded(),
        "patched-compile": lambda: torch.compile(patched_folded()),
        "onnxruntime": _onnx_peer(lambda: reparameterize_model(timm_model()), batch, "onnxruntime"),
        "openvino": _onnx_peer(lambda: reparameterize_model(timm_model()), batch, "openvino"),
        "optimize": _optimized(lambda: timm_model() if variant == "regular" else ref_model(), batch, device),
    }
    for mode in modes:
        if (mode.startswith("timm") or mode in ("onnxruntime", "openvino")) and variant != "regular":
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


def _served_step(model, batch, device, dtype, size=224):
    """optimize / onnxruntime / openvino: built for the run's dtype already, they take fp32 images."""
    x = torch.randn(batch, 3, size, size, device=device)

    def step():
        with torch.no_grad():
            model(x)
    return step


# modes whose builder takes the dtype and whose model is called without autocast
SERVED_MODES = ("onnxruntime", "openvino", "optimize")


def _train_step(model, batch, device, dtype, size=224, classes=1000):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with _autocast(device, dtype):
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out if torch.is_tensor(out) else out[0], target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _error_text(exc):
    if isinstance(exc, peer_impls.Unavailable):
        return str(exc)
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _measure_group(rows, label, entries, batch, device, dtype, iters, warmup):
    """Build every (variant, mode, build, make_step) of one model, then time them all interleaved.

    iters: (at least this many rounds, seconds of rounds per mode)."""
    min_rounds, budget = iters
    group, steps = [], {}
    for variant, mode, build, make_step in entries:
        key = (variant, mode)
        row = {"model": label, "variant": variant, "mode": mode, "batch": batch,
               "dtype": "fp32" if mode == "onnxruntime" else dtype}
        group.append(row)
        try:
            model = build(dtype) if mode in SERVED_MODES else build()
            steps[key] = (_served_step if mode in SERVED_MODES else make_step)(model, batch, device, dtype)
            steps[key]()  # a failing configuration must not lose the rest of the table
        except Exception as exc:
            steps.pop(key, None)
            row["error"] = _error_text(exc)
    try:
        timings = interleaved(steps, device, budget_s=budget * max(1, len(steps)), warmup=warmup,
                              min_rounds=min_rounds)
    except Exception as exc:
        timings = {}
        for row in group:
            row.setdefault("error", _error_text(exc))
    for row in group:
        key = (row["variant"], row["mode"])
        if key in timings:
            t = timings[key]
            row.update(ms_per_batch=t.median, img_per_s=batch / t.median * 1e3, img_per_s_low=batch / t.q3 * 1e3,
                       img_per_s_high=batch / t.q1 * 1e3, **t.summary())
            row["_timing"] = t
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


def _deit_entries(backend, device, modes, train, batch):
    """DeiT-Ti (timm, regular: eager, compile, onnxruntime) against Armour-Ti (python_ref armour, patched)."""
    import timm

    import armour_kernels
    from python_ref.registry import create_model

    name = "deit_tiny_patch16_224"

    def timm_deit():
        return timm.create_model(name).eval().to(device)

    def armour_ti():
        return armour_kernels.patch(create_model(name, attention="armour").eval().to(device), backend=backend)

    entries = [("regular", "timm-eager", timm_deit, _inference_step)]
    if "timm-compile" in modes:
        entries.append(("regular", "timm-compile", lambda: _freezing_compile(timm_deit(), device), _inference_step))
    for peer in ("onnxruntime", "openvino"):
        if peer in modes:
            entries.append(("regular", peer, _onnx_peer(timm_deit, batch, peer), None))
    entries.append(("armour", "patched", armour_ti, _inference_step))
    if "optimize" in modes:
        entries.append(("armour", "optimize",
                        _optimized(lambda: create_model(name, attention="armour").eval().to(device), batch, device),
                        None))
    if train:
        entries.append(("regular", "timm-train", timm_deit, _train_step))
        entries.append(("armour", "patched-train", armour_ti, _train_step))
    return entries


# ----------------------------------------------------------------------------- report

def _ratio_cell(row, base) -> str:
    """row's speed over base's: median of the per-round ratios with their IQR, or "no clear difference"."""
    if base is None:
        return ""
    r = ratio(row["_timing"], base["_timing"]) if "_timing" in row and "_timing" in base else None
    if r is None:
        return f"{row['img_per_s'] / base['img_per_s']:.2f}×"
    if not r.clear:
        return f"≈ ({r.low:.2f}–{r.high:.2f}×)"
    return f"{r.median:.2f}× ({r.low:.2f}–{r.high:.2f})"


def _markdown(env, settings, rows):
    """One table; inference rows get their speed ratio over each peer of the same model (PEERS)."""
    lines = [f"# armour-bench models — {env['device']}, {settings['dtype']}, batch {settings['batch']}", "",
             *record.environment_lines(env),
             f"Patched backend: {settings['patched_backend']}; every mode timed interleaved, round by round, "
             f"~{settings['budget_s']:g} s of rounds per mode (at least {settings['iters']}) after {settings['warmup']} "
             "warm-up; img/s is the median (IQR in the JSON); ratios are medians of the per-round ratios with their "
             "IQR, \"≈\" when that IQR contains 1.0 (no clear difference). onnxruntime always runs fp32.", "",
             "| model | variant | mode | batch | dtype | img/s | ms/batch | " + " | ".join(f"vs {p}" for p in PEERS)
             + " |", "|---|---|---|---:|---|---:|---:|" + "---:|" * len(PEERS)]
    peers = {(r["model"], r["mode"]): r for r in rows if r["mode"] in PEERS and "img_per_s" in r}
    train_base = {r["model"]: r for r in rows if r["mode"] == "timm-train" and "img_per_s" in r}
    for r in rows:
        head = f"| {r['model']} | {r['variant']} | {r['mode']} | {r['batch']} | {r['dtype']} | "
        if "error" in r:
            lines.append(head + f"{r['error']} | |" + " |" * len(PEERS))
            continue
        if r["mode"].endswith("train"):  # a training step compares with the timm training step only
            bases = [train_base.get(r["model"])] + [None] * (len(PEERS) - 1)
        else:
            bases = [peers.get((r["model"], p)) for p in PEERS]
        ratios = " | ".join(_ratio_cell(r, b) if b is not r else "" for b in bases)
        lines.append(head + f"{r['img_per_s']:.1f} | {r['ms_per_batch']:.2f} | {ratios} |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    device, dtype, batch, iters, warmup, modes, models, variants = _settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = _patch_backend(args.backend, device)
    env = record.environment(device, getattr(args, "argv", None))
    warning = record.busy_warning()
    if warning:
        print(warning, flush=True)
    print(f"# {env['device']} | torch {env['torch']} timm {env['timm']} | dtype {dtype} batch {batch} "
          f"| {env['threads']} threads | patched backend {backend}", flush=True)
    rows = []
    for name in models:
        entries = []
        for variant in variants:
            entries += [(variant, mode, build, _inference_step)
                        for mode, build in _inference_models(name, variant, modes, backend, device, batch)]
            if args.train:
                eager = (lambda n=name: _timm_levit(n).to(device)) if variant == "regular" else \
                    (lambda n=name, v=variant: _ref_levit(n, v).to(device))
                entries.append((variant, "timm-train" if variant == "regular" else "ref-train", eager, _train_step))
                entries.append((variant, "patched-train", _patched_trainable(eager, backend), _train_step))
        _measure_group(rows, name, entries, batch, device, dtype, iters, warmup)
    if args.deit:
        _measure_group(rows, "deit_tiny", _deit_entries(backend, device, modes, args.train, batch), batch, device,
                       dtype, iters, warmup)
    if args.vix:
        for label, entries in _vix_entries(backend, device, args.train):
            _measure_group(rows, label, entries, args.vix_batch_size, device, dtype, iters, warmup)
    settings = {"batch": batch, "dtype": dtype, "iters": iters[0], "budget_s": iters[1], "warmup": warmup,
                "patched_backend": backend}
    markdown = _markdown(env, settings, rows)
    rows = [{k: v for k, v in r.items() if k != "_timing"} for r in rows]
    report = {"environment": env, "settings": settings, "rows": rows}
    out = args.out
    if out == "auto":
        out = record.results_dir(device) / f"models-{dtype}-threads{env['threads']}-batch{batch}"
    if out:
        record.write_report(out, report, markdown)
    return 1 if rows and all("error" in r for r in rows) else 0


def _vix_entries(backend, device, train):
    """(label, entries) of the Vision Xformers on CIFAR-10: python_ref eager against patched."""
    import armour_kernels
    from python_ref.registry import create_model

    def infer(model, batch, device, dtype):  # CIFAR-10 images: 32×32 (the model's img_size)
        return _inference_step(model, batch, device, dtype, size=model.img_size)

    def learn(model, batch, device, dtype):
        return _train_step(model, batch, device, dtype, size=model.img_size, classes=10)

    for label, attention in VIX_MODELS.items():
        entries = []
        for variant in ("regular", "armour"):
            def eager(attention=attention, armour=variant == "armour"):
                return create_model("vix_cifar", attention=attention, armour=armour).eval().to(device)

            def patched(build=eager):
                return armour_kernels.patch(build(), backend=backend)

            entries += [(variant, "eager", eager, infer), (variant, "patched", patched, infer)]
            if train:
                entries += [(variant, "eager-train", eager, learn), (variant, "patched-train", patched, learn)]
        yield label, entries


def _patched_trainable(build, backend):
    def patched():
        import armour_kernels
        return armour_kernels.patch(build(), backend=backend)
    return patched
