"""`armour-bench` with no subcommand: the main job — check the kernels, then time the models against their peers.

1. Detects the device (CUDA GPU, else CPU) and prints it with the versions, warning when the
   load average says other work shares the machine.
2. Checks every fused kernel present on it against python_ref on small inputs (PASS / FAIL).
3. Times inference of LeViT-128S and of Armour-Ti (against DeiT-Ti, the model it replaces) as
     timm eager      the timm model (LeViT: BatchNorm folded, for every peer)
     ours eager      armour_kernels.deploy.prepare: patched onto the fused kernels
     timm compile    torch.compile (inductor, freezing) of the timm model
     ours optimize   armour_kernels.optimize (fused + torch.compile with freezing)
     onnxruntime     the timm model in onnxruntime (fp32), intra-op threads = ours
     openvino        the timm model in OpenVINO, precision hint and threads set explicitly
   and, like for like (same model on both sides), ours eager / optimize on timm's DeiT-Ti and
   onnxruntime / openvino on Armour-Ti (exported decomposed, armour_kernels.export.to_onnx)
   (benchmarks/peers.py; a peer whose package is missing says so in its row) for each case
   (batch, threads): by default batch 1 on 1 thread (one request at a time), 16 and 64 on
   2 threads. `--all` adds Armour-128S and Armour+-128S.
   Every implementation of a case is timed interleaved, round by round, for a time budget
   (benchmarks/timing.py), after warm-up; the table gives the median with its IQR, and how
   many times faster `ours optimize` is than each peer, from the per-round ratios: when their
   IQR contains 1.0 it says "no clear difference"; a row of another model than the headline's also
   against ours optimize on its own model ("same model on both sides"). Every row has its
   first-call seconds (compile_s: build, compilation or export + session, and the first call).
4. At batch 1 on CPU: µs per call of ours eager / timm eager / ours optimize and how much of it
   the GEMM / convolution / attention kernels take, and a torch.profiler breakdown of our eager
   LeViT-128S call (benchmarks/overhead.py).
5. Writes <stem>.json (every sample summary, the environment, the command), <stem>.md and a plot
   with error bars (<stem>.png; without matplotlib one line says so and the rest is written).

timm + torch.compile is compiled once per model and thread count: statically at batch 1, and as one
batch-dynamic graph shared by batch 16 and 64 (their rows say `dynamic_batch`); ours optimize() is
called per batch size with that batch's example, as a server would (the graph runner exports it in
~0.5 s; bf16 batches of 16 and 64 compile with inductor). Most of the run is torch.compile and
OpenVINO / ONNX builds; `--quick` (batch 1
on 1 thread and 64 on 2 threads, compiled rows at batch 1 only, no timm compile, 1 s budgets) needs
3 compilations; `--no-compile` none.
ARMOUR_BENCH_TINY=1 (or --tiny) shrinks the models to 32×32 images and one block per stage
(a seconds-long smoke run; the tests use it).
"""
from __future__ import annotations

import copy
import gc
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import overhead, peers, record
from .kernels import DTYPES
from .progress import Progress
from .timing import Timing, interleaved, ratio

DEFAULT_OUT = Path("bench/out")
IMPLS = ("timm eager", "ours eager", "timm compile", "ours optimize", "onnxruntime", "openvino")
COMPILED = ("timm compile", "ours optimize")
OURS = ("ours eager", "ours optimize")
ONNX_PEERS = ("onnxruntime", "openvino")  # also run on each Armour model of ours (same model on both sides)
HEADLINE = "ours optimize"


@dataclass(frozen=True)
class Group:
    """One timm model (the peers run it) and the models of ours compared with it."""
    peer: str                   # label of the timm model
    base: str                   # timm name
    ours: tuple                 # ((label, armourize variant or None), ...)


# DeiT-Ti: Armour-Ti (ours) against timm's DeiT-Ti, and, like for like, our kernels on DeiT-Ti itself
# (optimize() of the timm model) and the ONNX peers on Armour-Ti: the kernels' gain apart from the
# smaller model's.
GROUPS = (Group("LeViT-128S", "levit_128s", (("LeViT-128S", None),)),
          Group("DeiT-Ti", "deit_tiny_patch16_224", (("Armour-Ti", "armour"), ("DeiT-Ti", None))))
ALL_GROUPS = (Group("LeViT-128S", "levit_128s", (("LeViT-128S", None), ("Armour-128S", "armour"),
                                                 ("Armour+-128S", "armour_plus"))),
              Group("DeiT-Ti", "deit_tiny_patch16_224", (("Armour-Ti", "armour"), ("DeiT-Ti", None))))


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="batch 1 (1 thread) and 64 (2 threads) only, no timm compile, short budgets (~2 min)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None,
                        help="fp32, bf16, fp16 or a comma list (default: fp32 on CPU, fp16 on CUDA)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for main-<dtype>.json / .md / .png (`auto`: bench/results/<device>/)")
    parser.add_argument("--cases", default=None,
                        help="comma list of BATCHxTHREADS, e.g. 1x1,64x2 (default 1x1,16x2,64x2 on CPU)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(b) for b in s.split(",")], default=None,
                        help="comma-separated batch sizes (with --threads: every combination)")
    parser.add_argument("--threads", type=lambda s: [int(t) for t in str(s).split(",")], default=None,
                        help="CPU threads, or a comma list (torch.set_num_threads; peers get the same)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed rounds per case and model (default 3 on CPU, 1 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="at least this many rounds (default 5)")
    compile_group = parser.add_mutually_exclusive_group()
    compile_group.add_argument("--compile", dest="compile", action="store_true", default=None,
                               help="include timm compile even with --quick")
    compile_group.add_argument("--no-compile", dest="compile", action="store_false",
                               help="leave out both compiled rows (timm compile, ours optimize)")
    parser.add_argument("--max-autotune", action="store_true",
                        help="ours optimize with max_autotune=True (inductor's GEMM templates; minutes more to compile)")
    parser.add_argument("--all", action="store_true", help="also Armour-128S and Armour+-128S")
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("ARMOUR_BENCH_TINY", "0") not in ("", "0"),
                        help="tiny models (32×32 images, one block per stage): a seconds-long smoke run")


# ----------------------------------------------------------------------------- settings

@dataclass
class Settings:
    device: torch.device
    dtypes: list            # names
    cases: list             # [(batch, threads or None)]
    impls: list
    groups: tuple
    budget_s: float
    min_rounds: int
    tiny: bool
    compile_batched: bool = True    # compiled rows at batch > 1 too (--quick: batch 1 only)
    max_autotune: bool = False      # ours optimize(max_autotune=True)

    def dynamic_batch(self, batch: int, threads) -> bool:
        """Compile one batch-dynamic graph shared by the batch > 1 cases of this thread count, when
        there are several (one compilation instead of one per batch size: the default run's time)."""
        return batch > 1 and sum(1 for b, t in self.cases if b > 1 and t == threads) > 1


def _cases(args, cpu: bool) -> list:
    if args.cases:
        cases = []
        for case in args.cases.split(","):
            batch, _, threads = case.partition("x")
            cases.append((int(batch), int(threads) if threads and cpu else None))
        return cases
    if args.batch_sizes or args.threads:
        batches = args.batch_sizes or ([1, 64] if args.quick else [1, 16, 64])
        threads = (args.threads or [torch.get_num_threads()]) if cpu else [None]
        return [(b, t) for t in threads for b in batches]
    if args.tiny:
        return [(1, 1), (2, 2)] if cpu else [(1, None), (2, None)]
    if cpu:
        most = min(2, os.cpu_count() or 1)
        return [(1, 1), (64, most)] if args.quick else [(1, 1), (16, most), (64, most)]
    return [(1, None), (64, None)] if args.quick else [(1, None), (16, None), (64, None), (256, None)]


def settings(args) -> Settings:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("armour-bench: --device cuda but CUDA is not available")
    cpu = device.type == "cpu"
    dtypes = (args.dtype or ("fp32" if cpu else "fp16")).split(",")
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise SystemExit(f"armour-bench: unknown dtype(s) {unknown}; choose from {sorted(DTYPES)}")
    with_compile = args.compile if args.compile is not None else True
    impls = [i for i in IMPLS if with_compile or i not in COMPILED]
    if args.quick and args.compile is None:
        impls.remove("timm compile")
    budget = args.budget if args.budget is not None else (0.2 if args.tiny else (1.0 if args.quick else 2.0))
    groups = ALL_GROUPS if args.all else GROUPS
    return Settings(device, dtypes, _cases(args, cpu), impls, groups, budget, max(args.repeats or 5, 2), args.tiny,
                    compile_batched=not args.quick or bool(args.compile), max_autotune=args.max_autotune)


# ----------------------------------------------------------------------------- models

def _timm_model(name: str, tiny: bool):
    import timm
    kwargs = {}
    if tiny:
        kwargs = dict(img_size=32, depth=1) if name.startswith("deit") else dict(img_size=32, depth=(1, 1, 1))
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def build_models(group: Group, tiny: bool):
    """(the timm model for the peers, {our label: our source model}); LeViT's BatchNorms folded in both."""
    from armour_kernels import armourize, fold_batchnorm

    base = _timm_model(group.base, tiny)
    if group.base.startswith("levit"):
        fold_batchnorm(base)
    ours = {}
    for label, variant in group.ours:
        ours[label] = copy.deepcopy(base) if variant is None else armourize(copy.deepcopy(base), variant,
                                                                            backend=None).eval()
    return base, ours


def _entries(group: Group, impls, ours_variants: dict) -> list:
    """(impl, model label) pairs of a group, in table order: ours on each of our models, timm on the
    peer, the ONNX peers on the peer and on each Armour model of ours (ours_variants: label → variant)."""
    entries = []
    for impl in impls:
        if impl in OURS:
            entries += [(impl, label) for label in ours_variants]
        elif impl in ONNX_PEERS:
            entries += [(impl, label) for label in dict.fromkeys([group.peer, *ours_variants])
                        if label == group.peer or ours_variants[label] is not None]
        else:
            entries.append((impl, group.peer))
    return entries


def _onnx_file(onnx_files: dict, label: str, model, example):
    """The ONNX export of one model, made once per case and shared by onnxruntime and openvino."""
    if label not in onnx_files:
        try:
            onnx_files[label] = peers.OnnxFile(model, example)
        except peers.Unavailable as missing:
            onnx_files[label] = missing
    if isinstance(onnx_files[label], Exception):
        raise peers.Unavailable(str(onnx_files[label]))
    return onnx_files[label]


def _build(impl: str, model, example, dtype, onnx=None, dynamic_batch: bool = False, max_autotune: bool = False):
    """The callable of one (impl, model), or raises peers.Unavailable; onnx: the OnnxFile of the ONNX peers."""
    if impl == "timm eager":
        return peers.timm_eager(model, example, dtype)
    if impl == "ours eager":
        return _ours_eager(model, example, dtype)
    if impl == "timm compile":
        return peers.timm_compile(model, example, dtype, dynamic_batch=dynamic_batch)
    if impl == "ours optimize":
        return peers.ours_optimize(model, example, dtype, dynamic_batch=dynamic_batch, max_autotune=max_autotune)
    if impl == "onnxruntime":
        return peers.onnxruntime_session(onnx, example, dtype)
    return peers.openvino_model(onnx, example, dtype)


def _ours_eager(model, example, dtype):
    from armour_kernels.backend import cpu_has_op
    if example.device.type == "cpu" and not cpu_has_op("attention"):
        raise peers.Unavailable("C++ extension not built")
    return peers.ours_eager(model, example, dtype)


# ----------------------------------------------------------------------------- measuring

def _error_text(error: Exception) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return text[:160] if isinstance(error, peers.Unavailable) else f"failed: {type(error).__name__}: {text[:140]}"


def measure_case(group: Group, base, ours_models: dict, s: Settings, dtype_name: str, batch: int, threads,
                 progress: Progress, compiled: dict | None = None) -> list:
    """Build every implementation of one case, time them interleaved; one row each.

    compiled: the group's batch-dynamic compiled models by (impl, model, threads), shared between cases,
    each with its first-call seconds.

    Each row's compile_s: the seconds from the source model to the first result — the build and the
    first call: optimize()'s compile, torch.compile's first call, the ONNX export plus onnxruntime's
    session creation or OpenVINO's convert_model + compile_model, the copy and patch of the eager
    rows. A batch-dynamic graph shared with an earlier case keeps the seconds it took there."""
    compiled = {} if compiled is None else compiled
    dtype, size = DTYPES[dtype_name], (32 if s.tiny else 224)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(1)
    example = torch.randn(batch, 3, size, size, device=s.device)
    where = f"{group.peer} {dtype_name} batch {batch}" + (f" × {threads} thread{'s' * (threads > 1)}" if threads else "")
    rows, fns, onnx_files = [], {}, {}
    for impl, label in _entries(group, s.impls, dict(group.ours)):
        model = ours_models[label] if label in ours_models and (impl in OURS or label != group.peer) else base
        progress.step(f"{where}: building {impl} ({label})")
        row = dict(group=group.peer, model=label, impl=impl, batch=batch, threads=threads,
                   dtype="fp32" if impl == "onnxruntime" else dtype_name)
        if impl == "ours optimize" and s.max_autotune:
            row["max_autotune"] = True
        if impl in COMPILED and batch > 1 and not s.compile_batched:
            row["status"] = "compiled at batch 1 only in --quick"
            rows.append(row)
            continue
        # timm + torch.compile: one batch-dynamic graph per thread count (its compilations are most of the
        # run); ours optimize per batch size, as a server calls it (the graph runner exports a shape in
        # ~0.5 s; where inductor serves, it compiles that batch size)
        dynamic = impl == "timm compile" and s.dynamic_batch(batch, threads)
        if dynamic:
            row["dynamic_batch"] = True  # one graph for this thread count's batch sizes
        start, before, key = time.perf_counter(), 0.0, (impl, label, threads)
        try:
            onnx = None
            if impl in ONNX_PEERS:
                onnx = _onnx_file(onnx_files, label, model, example)
                start, before = time.perf_counter(), onnx.export_s  # the export counts for both ONNX peers
            if dynamic and key in compiled:
                fn, before = compiled[key]
                row["compile_shared"] = True  # compiled in an earlier case of this thread count
            else:
                fn = _build(impl, model.to(s.device), example, dtype, onnx, dynamic_batch=dynamic,
                            max_autotune=s.max_autotune)
            with torch.no_grad():
                fn(example)  # a failing configuration must not lose the rest of the table
            fns[(impl, label)] = fn
            row["status"] = "ok"
        except Exception as error:  # noqa: BLE001 - reported in the row, the run goes on
            row["status"] = _error_text(error)
        seconds = time.perf_counter() - start
        row["build_s"] = round(seconds, 2)  # this case's build and first call
        row["compile_s"] = round(before if row.get("compile_shared") else before + seconds, 2)
        if dynamic and row["status"] == "ok" and key not in compiled:
            compiled[key] = (fn, row["compile_s"])
        rows.append(row)
    for onnx in onnx_files.values():
        if isinstance(onnx, peers.OnnxFile):
            onnx.close()
    progress.step(f"{where}: timing {len(fns)} implementations interleaved ({s.budget_s:g} s)")
    row_load = record.load_average()
    timings = _time(fns, example, s)
    for row in rows:
        key = (row["impl"], row["model"])
        if key in timings and timings[key].samples:
            row.update(timings[key].summary(), load_avg_1min=row_load)
            rates = timings[key].per_second(batch)
            row.update(img_per_s=rates["per_s"], img_per_s_low=rates["per_s_low"], img_per_s_high=rates["per_s_high"])
            row["_timing"] = timings[key]
        elif key in timings and row["status"] == "ok":
            row["status"] = "failed while timing"
    if s.device.type == "cpu" and batch == 1 and group.peer.startswith("LeViT") and fns:
        progress.step(f"{where}: profiling the per-call overhead")
        _overhead(rows, fns, example)
    del fns
    gc.collect()
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _time(fns: dict, example, s: Settings) -> dict:
    def call(fn):
        def run():
            with torch.no_grad():
                fn(example)
        return run

    calls = {key: call(fn) for key, fn in fns.items()}
    try:
        return interleaved(calls, s.device, budget_s=s.budget_s * max(1, len(calls)), warmup=2,
                           min_rounds=s.min_rounds)
    except Exception:  # one implementation failing mid-run: time the others one by one
        timings = {}
        for key, fn in calls.items():
            try:
                timings[key] = interleaved({key: fn}, s.device, budget_s=s.budget_s, warmup=1,
                                           min_rounds=s.min_rounds)[key]
            except Exception:  # noqa: BLE001
                timings[key] = Timing()
        return timings


def _overhead(rows: list, fns: dict, example) -> None:
    """Attach to the batch-1 rows of ours eager / timm eager / ours optimize the profiler breakdown."""
    for row in rows:
        key = (row["impl"], row["model"])
        if row["impl"] not in ("ours eager", "timm eager", "ours optimize") or key not in fns or "median_ms" not in row:
            continue
        fn = fns[key]
        found = overhead.breakdown(lambda fn=fn: fn(example), calls=10)
        wall = found["wall_us"]  # back to back, as the profiled calls (the interleaved median starts colder)
        row["overhead"] = dict(wall_us=wall, kernel_us=found["kernel_us"],
                               outside_kernels_us=max(0.0, wall - found["kernel_us"]),
                               ops=found["ops"] if row["impl"] == "ours eager" else found["ops"][:8])


def add_ratios(rows: list) -> None:
    """Each row of a case gets `optimize_vs_this`: how many times faster ours optimize (the group's
    first model of ours) is than it; ours eager gets `vs_timm_eager`. Where ours optimize runs
    several models (Armour-Ti and DeiT-Ti), each other row also gets `same_model_optimize_vs_this`:
    ours optimize on that same model against it (like for like: the kernels' gain without Armour's
    smaller model)."""
    cases = {}
    for row in rows:
        cases.setdefault((row["group"], row["batch"], row["threads"], row["dtype_run"]), []).append(row)
    for case in cases.values():
        timed = [r for r in case if "_timing" in r]
        headline = next((r for r in timed if r["impl"] == HEADLINE), None)
        timm = next((r for r in timed if r["impl"] == "timm eager"), None)
        optimized = {r["model"]: r for r in timed if r["impl"] == HEADLINE}
        for row in timed:
            if headline is not None and row is not headline:
                row["optimize_vs_this"] = ratio(headline["_timing"], row["_timing"]).as_dict()
            same = optimized.get(row["model"])
            if len(optimized) > 1 and same is not None and same is not row:
                row["same_model_optimize_vs_this"] = ratio(same["_timing"], row["_timing"]).as_dict()
            if timm is not None and row["impl"] in OURS:
                row["vs_timm_eager"] = ratio(row["_timing"], timm["_timing"]).as_dict()


def _ratio_text(r: dict | None) -> str:
    if not r:
        return ""
    if not r["clear"]:
        return f"no clear difference ({r['ratio_low']:.2f}-{r['ratio_high']:.2f}x)"
    return f"{r['ratio']:.2f}x ({r['ratio_low']:.2f}-{r['ratio_high']:.2f})"


# ----------------------------------------------------------------------------- report

def _compile_text(row) -> str:
    """The first-call seconds; `(shared)` when a batch-dynamic graph compiled in an earlier case serves this one."""
    if "compile_s" not in row:
        return ""
    return f"{row['compile_s']:.1f}" + (" (shared)" if row.get("compile_shared") else "")


def _case_text(row) -> str:
    threads = f", {row['threads']} thread{'s' * (row['threads'] > 1)}" if row["threads"] else ""
    return f"{row['group']}, {row['dtype_run']}, batch {row['batch']}{threads}"


def table(rows: list) -> str:
    """Plain-text tables, one per case: img/s with IQR, ms per call, first-call seconds, ours optimize ÷ this
    (the headline model, and the same model on both sides where the row's model is another)."""
    header = ["impl", "model", "img/s", "IQR img/s", "ms/call", "first call s", f"{HEADLINE} is … faster",
              "same model on both sides"]
    blocks, cases = [], {}
    for row in rows:
        cases.setdefault(_case_text(row), []).append(row)
    for title, case in cases.items():
        lines, status = [], {}
        for r in case:
            if "img_per_s" in r:
                lines.append([r["impl"], r["model"], f"{r['img_per_s']:.1f}",
                              f"{r['img_per_s_low']:.1f}-{r['img_per_s_high']:.1f}", f"{r['median_ms']:.2f}",
                              _compile_text(r), _ratio_text(r.get("optimize_vs_this")),
                              _ratio_text(r.get("same_model_optimize_vs_this"))])
            else:  # a row without a timing: its reason, written across the number columns
                status[len(lines)] = r["status"]
                lines.append([r["impl"], r["model"], "", "", "", "", "", ""])
        widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]

        def fmt(cols, note=None):
            cells = [c.ljust(w) if i < 2 or i > 5 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))]
            return "  ".join(cells[:2] + [note] if note else cells).rstrip()
        block = [title, fmt(header), fmt(["-" * w for w in widths])] + [fmt(l, status.get(i)) for i, l in
                                                                          enumerate(lines)]
        eager = [r for r in case if r["impl"] == "ours eager" and r.get("vs_timm_eager")]
        block += [f"  {r['model']} ours eager vs timm eager: {_ratio_text(r['vs_timm_eager'])}" for r in eager]
        blocks.append("\n".join(block))
    return "\n\n".join(blocks)


def markdown(report: dict) -> str:
    env, rows = report["environment"], report["rows"]
    lines = [f"# armour-bench main job — {env['device']}", "", *record.environment_lines(env),
             f"Method: every implementation of a case timed interleaved, round by round, ~{report['budget_s']:g} s "
             f"of rounds per implementation after 2 warm-up calls; median and interquartile range (IQR) of the "
             "per-call times; ratios are medians (IQR) of the per-round ratios, \"no clear difference\" when that IQR "
             "contains 1.0. onnxruntime always runs fp32. *first call s*: seconds from the source model to the "
             "first result (optimize()'s or torch.compile's compilation, the ONNX export plus onnxruntime's session "
             "or OpenVINO's compile_model; *shared*: a batch-dynamic graph compiled in an earlier case). "
             f"*{HEADLINE} is … faster* compares with the group's first model of ours (Armour-Ti against "
             "DeiT-Ti); *same model on both sides* compares a row with ours optimize on the same model (our "
             "kernels on DeiT-Ti, the ONNX peers on Armour-Ti), so the kernels' gain is not confused with "
             "Armour's smaller model.", "",
             f"| case | impl | model | img/s | IQR img/s | ms/call | first call s | {HEADLINE} is … faster | "
             "same model on both sides | ours vs timm eager |",
             "|---|---|---|---:|---|---:|---:|---|---|---|"]
    for r in rows:
        if "img_per_s" in r:
            lines.append(f"| {_case_text(r)} | {r['impl']} | {r['model']} | {r['img_per_s']:.1f} | "
                         f"{r['img_per_s_low']:.1f}-{r['img_per_s_high']:.1f} | {r['median_ms']:.2f} | "
                         f"{_compile_text(r)} | {_ratio_text(r.get('optimize_vs_this'))} | "
                         f"{_ratio_text(r.get('same_model_optimize_vs_this'))} | "
                         f"{_ratio_text(r.get('vs_timm_eager'))} |")
        else:
            lines.append(f"| {_case_text(r)} | {r['impl']} | {r['model']} | {r['status']} | | | "
                         f"{_compile_text(r)} | | | |")
    profiled = [r for r in rows if "overhead" in r]
    if profiled:
        lines += ["", "## Per-call cost at batch 1", "",
                  "µs per call, calls back to back (warm caches: below the interleaved medians above); *kernels*: "
                  "self time of the GEMM / convolution / attention ops (torch.profiler); *outside*: the rest of the "
                  "call — Python, dispatch, checks, casts, allocations, small ops (and, where inductor serves ours "
                  "optimize, its generated elementwise kernels).", "",
                  "| case | impl | model | µs per call | kernels µs | outside µs |", "|---|---|---|---:|---:|---:|"]
        for r in profiled:
            o = r["overhead"]
            lines.append(f"| {_case_text(r)} | {r['impl']} | {r['model']} | {o['wall_us']:.0f} | {o['kernel_us']:.0f} | "
                         f"{o['outside_kernels_us']:.0f} |")
        for r in profiled:
            if r["impl"] == "ours eager":
                lines += ["", f"### Where {r['model']} ours eager spends a batch-1 call ({_case_text(r)})", "",
                          *overhead.table(r["overhead"]["ops"], r["overhead"]["wall_us"])]
    return "\n".join(lines) + "\n"


def plot(rows: list, path: Path, title: str) -> str | None:
    """throughput per case with IQR error bars; returns a message instead when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"plot skipped: matplotlib is not installed ({peers.INSTALL_HINT}); table and JSON written"
    groups = list(dict.fromkeys((r["group"], r["dtype_run"]) for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.8), squeeze=False)
    for ax, (group, dtype) in zip(axes[0], groups):
        case_rows = [r for r in rows if (r["group"], r["dtype_run"]) == (group, dtype)]
        cases = list(dict.fromkeys((r["batch"], r["threads"]) for r in case_rows))
        series = list(dict.fromkeys((r["impl"], r["model"]) for r in case_rows))
        width = 0.8 / max(1, len(series))
        for i, (impl, model) in enumerate(series):
            xs, ys, low, high = [], [], [], []
            for c, case in enumerate(cases):
                r = next((r for r in case_rows if (r["impl"], r["model"], r["batch"], r["threads"]) ==
                          (impl, model) + case and "img_per_s" in r), None)
                if r is not None:
                    xs.append(c + (i - (len(series) - 1) / 2) * width)
                    ys.append(r["img_per_s"])
                    low.append(r["img_per_s"] - r["img_per_s_low"])
                    high.append(r["img_per_s_high"] - r["img_per_s"])
            if xs:
                ax.bar(xs, ys, width, yerr=[low, high], capsize=2, label=f"{impl} ({model})")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f"batch {b}" + (f"\n{t} thr" if t else "") for b, t in cases])
        ax.set_yscale("log")
        ax.set_ylabel("images / s (median, IQR)")
        ax.set_title(f"{group} family, {dtype}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------- driver

def _steps(s: Settings) -> int:
    """Progress steps: a build per implementation, a timing per case, a profile per batch-1 LeViT case."""
    per_case = sum(len(_entries(g, s.impls, dict(g.ours))) + 1 for g in s.groups)
    profiles = sum(1 for g in s.groups if g.peer.startswith("LeViT")) * sum(1 for b, _ in s.cases if b == 1)
    return len(s.dtypes) * (len(s.cases) * per_case + (profiles if s.device.type == "cpu" else 0))


def run(args) -> int:
    from .checks import run_checks

    s = settings(args)
    threads_before = torch.get_num_threads()
    env = record.environment(s.device, getattr(args, "argv", None))
    print(f"armour-bench: {env['device']}, {','.join(s.dtypes)}; " + record.environment_lines(env)[1].strip())
    warning = record.busy_warning()
    if warning:
        print(warning)
    if "timm compile" not in s.impls:
        print("  (timm compile left out: pass --compile to include it)")

    print("\nKernel checks against python_ref (small inputs):")
    checks, missing = run_checks(s.device, DTYPES[s.dtypes[0]])
    for check in checks:
        print(check.line())
    for op in missing:
        print(f"  [SKIP] {op:<20} no fused kernel for {s.device.type} here")
    failed = [c for c in checks if not c.passed]

    cases = ", ".join(f"batch {b}" + (f" × {t} thr" if t else "") for b, t in s.cases)
    print(f"\nTiming inference ({cases}; {s.budget_s:g} s of interleaved rounds per implementation"
          f"{'; tiny models' if s.tiny else ''})", flush=True)
    rows, start = [], time.perf_counter()
    try:
        with Progress(_steps(s)) as progress:
            for dtype_name in s.dtypes:
                for group in s.groups:
                    base, ours_models = build_models(group, s.tiny)
                    compiled = {}
                    for batch, threads in s.cases:
                        for row in measure_case(group, base, ours_models, s, dtype_name, batch, threads, progress,
                                                compiled):
                            row["dtype_run"] = dtype_name
                            rows.append(row)
                    del compiled
    finally:
        torch.set_num_threads(threads_before)
    add_ratios(rows)
    print()
    print(table(rows))

    report = dict(environment=env, device_type=s.device.type, dtypes=s.dtypes, cases=s.cases, impls=s.impls,
                  budget_s=s.budget_s, min_rounds=s.min_rounds, tiny=bool(s.tiny), busy_warning=warning,
                  seconds=round(time.perf_counter() - start, 1), checks=[c.as_dict() for c in checks],
                  kernels_missing=missing, rows=[{k: v for k, v in r.items() if k != "_timing"} for r in rows])
    out = Path(record.resolve_out(args.out, s.device))
    stem = out / f"main-{'-'.join(s.dtypes)}"
    record.write_report(stem, report, markdown(report))
    note = plot(rows, Path(f"{stem}.png"), f"armour-bench: {env['device']}, {','.join(s.dtypes)}")
    print(note or f"wrote {stem}.png")
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
