"""`armour-bench linear_attention`: fused Nyström / Performer attention vs python_ref eager and exact SDPA.

Shapes: the Vision Xformers paper layer (n = 1025, h = 4, d = 32; Nyström m = 64 landmarks and a
33-tap residual conv, Performer m = 110 softmax features) at a training batch, then one sequence
(B = 1) of n tokens: 256 … 4096 on CPU, 1024 … 65,536 on CUDA. For each shape, thread count
(CPU: 1 and 2 by default, torch.set_num_threads) and family, the implementations
  - armour_kernels (Triton on CUDA; the C++ extension on CPU when it has the op),
  - python_ref eager (the reference function in eager PyTorch, with autograd),
  - exact softmax attention, F.scaled_dot_product_attention on the same q, k, v (a reference point),
are timed interleaved call by call (timing.interleaved_ms, one round at a time): the forward (no
grad) and forward+backward (gradients for q, k, v and the conv weight). Reported: medians, the
spread (interquartile range over the rounds, in % of the median), armour_kernels' speed-up over
python_ref and SDPA, the peak extra memory of forward+backward on CUDA, the machine's load average
before and after, and whether the targets are met: fwd+bwd ≥ 1.5× python_ref at the paper shape and
n ∈ {1024, 4096}, and never slower than python_ref at any shape measured.
Inputs in the (B, N, H, D) layout; python_ref and SDPA get transposed views.
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from . import record
from .timing import interleaved_ms

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
HEADS, DIM_HEAD, LANDMARKS, FEATURES, CONV_TAPS = 4, 32, 64, 110, 33
OPS = {"nystrom": "nystrom_attention", "performer": "performer_attention"}
IMPLS = ("armour_kernels", "python_ref", "sdpa")
TARGET_SPEEDUP, TARGET_NS = 1.5, (1024, 4096)  # fwd+bwd vs python_ref at the paper shape and these n


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="two short sequences only (a smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--families", default="nystrom,performer", help="comma-separated: nystrom, performer")
    parser.add_argument("--landmarks", type=int, nargs="+", default=[LANDMARKS],
                        help="Nyström landmark counts to time (default 64; the paper's Performer uses 110 features)")
    parser.add_argument("--ns", type=int, nargs="+", default=None,
                        help="single-sequence lengths (default: 256 1024 2048 4096 on CPU, 1024 … 65536 on CUDA)")
    parser.add_argument("--max-n", type=int, default=65536, help="longest sequence of the sweep")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper shape (batch × 1025 tokens)")
    parser.add_argument("--threads", default=None,
                        help="CPU thread counts, comma-separated (default 1,2; each capped at os.cpu_count())")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (median reported)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for linear_attention-<device>-<dtype>.json / .md (`auto`: bench/results/<device>/)")


def sweep(quick: bool, device: str, max_n: int, ns=None, paper=True):
    """(label, batch, n) rows: the paper's layer at a batch, then single sequences."""
    if quick:
        return [("seq", 1, 257), ("paper", 1 if device == "cpu" else 8, 1025)]
    rows = [("paper", 8 if device == "cpu" else 64, 1025)] if paper else []
    if ns is None:
        ns = [256, 1024, 2048, 4096] if device == "cpu" else [1024 * 2 ** i for i in range(7)]
    return rows + [("seq", 1, n) for n in ns if n <= max_n]


def _backend(device: str, op: str):
    from armour_kernels.backend import cpu_has_op
    if device == "cuda":
        return "triton"
    return "cpu" if cpu_has_op(op) else None


def implementations(family: str, device: str, landmarks: int):
    """{name: fn(q, k, v, extra) or None (unavailable)} for one family."""
    import armour_kernels
    from python_ref.nystrom import nystrom_attention as ref_nystrom
    from python_ref.performer import performer_attention as ref_performer

    backend = _backend(device, OPS[family])

    def sdpa(q, k, v, extra):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    if family == "nystrom":
        def ours(q, k, v, extra):
            return armour_kernels.nystrom_attention(q, k, v, num_landmarks=landmarks, conv_weight=extra,
                                                    backend=backend)

        def reference(q, k, v, extra):
            return ref_nystrom(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), num_landmarks=landmarks,
                               conv_weight=extra)
    else:
        def ours(q, k, v, extra):
            return armour_kernels.performer_attention(q, k, v, projection=extra, backend=backend)

        def reference(q, k, v, extra):
            return ref_performer(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), projection=extra)

    return {"armour_kernels": ours if backend else None, "python_ref": reference, "sdpa": sdpa}


def _extra(family, device, dtype):
    """The conv weight (Nyström, a trained parameter) or the projection buffer (Performer)."""
    if family == "nystrom":
        return (torch.randn(HEADS, 1, CONV_TAPS, 1, device=device, dtype=dtype) * 0.1).requires_grad_()
    from python_ref.performer import gaussian_orthogonal_random_matrix
    return gaussian_orthogonal_random_matrix(FEATURES, DIM_HEAD).to(device)


def _calls(fn, inputs, extra):
    """(forward without grad, forward+backward) of fn on fresh leaves."""
    leaves = [t.detach().requires_grad_() for t in inputs]

    def forward():
        with torch.no_grad():
            fn(*leaves, extra)

    def forward_backward():
        out = fn(*leaves, extra)
        out.backward(torch.ones_like(out))

    return forward, forward_backward


def _stats(samples):
    """(median, interquartile range in % of the median) of a list of ms."""
    med = statistics.median(samples)
    if len(samples) < 4:
        return med, 100.0 * (max(samples) - min(samples)) / med if med else 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return med, 100.0 * (q3 - q1) / med if med else 0.0


def measure(impls, inputs, extra, device, repeats):
    """{impl: (fwd ms, fwd spread %, fwd+bwd ms, fwd+bwd spread %)}: every call timed in turn, round by round."""
    calls = {}
    for name, fn in impls.items():
        forward, forward_backward = _calls(fn, inputs, extra)
        calls[f"{name} fwd"] = forward
        calls[f"{name} fwd_bwd"] = forward_backward
    interleaved_ms(calls, device, 1, warmup=1)  # first calls: caches, JIT kernels, allocator
    samples = {name: [] for name in calls}
    for _ in range(max(1, repeats)):
        for name, ms in interleaved_ms(calls, device, 1, warmup=0).items():
            samples[name].append(ms)
    return {name: (*_stats(samples[f"{name} fwd"]), *_stats(samples[f"{name} fwd_bwd"])) for name in impls}


def peak_mib(fn, inputs, extra):
    """Peak extra CUDA memory of one forward+backward."""
    _, forward_backward = _calls(fn, inputs, extra)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    forward_backward()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def add_ratios(rows):
    """armour_kernels' speed-up over python_ref and SDPA (their ms / ours) on its rows."""
    index = {(r["family"], r["m"], r["label"], r["n"], r["threads"], r["impl"]): r for r in rows}
    for r in rows:
        if r["impl"] != "armour_kernels" or r["status"] != "ok":
            continue
        for peer in ("python_ref", "sdpa"):
            other = index.get((r["family"], r["m"], r["label"], r["n"], r["threads"], peer))
            for timing in ("fwd", "fwd_bwd"):
                if other and other.get(f"{timing}_ms") and r.get(f"{timing}_ms"):
                    r[f"{timing}_vs_{peer}"] = other[f"{timing}_ms"] / r[f"{timing}_ms"]


def targets(rows):
    """Per (family, threads): the fwd+bwd targets vs python_ref, met or not, with the worst ratio seen."""
    result = {}
    ours = [r for r in rows if r["impl"] == "armour_kernels" and r.get("fwd_bwd_vs_python_ref")]
    for family, threads in sorted({(r["family"], r["threads"]) for r in ours}):
        mine = [r for r in ours if (r["family"], r["threads"]) == (family, threads)]
        key = [r for r in mine if r["label"] == "paper" or r["n"] in TARGET_NS]
        worst = min(min(r["fwd_vs_python_ref"], r["fwd_bwd_vs_python_ref"]) for r in mine)
        low = min((r["fwd_bwd_vs_python_ref"] for r in key), default=None)
        result[f"{family} {threads} thread(s)"] = {
            f"fwd+bwd >= {TARGET_SPEEDUP}x at paper shape and n in {TARGET_NS}":
                "not measured" if low is None else f"{'met' if low >= TARGET_SPEEDUP else 'NOT met'} (lowest {low:.2f}x)",
            "never slower than python_ref (fwd and fwd+bwd)": f"{'met' if worst >= 1.0 else 'NOT met'} "
                                                              f"(lowest {worst:.2f}x)"}
    return result


def crossovers(rows):
    """Per (family, m, threads, timing): the smallest n from which armour_kernels beats SDPA at every larger n."""
    result = {}
    for family, m, threads in sorted({(r["family"], r["m"], r["threads"]) for r in rows}):
        for timing in ("fwd_ms", "fwd_bwd_ms"):
            def times(impl):
                return {r["n"]: r.get(timing) for r in rows if (r["family"], r["m"], r["threads"], r["impl"],
                                                                 r["label"]) == (family, m, threads, impl, "seq")}
            ours, exact = times("armour_kernels"), times("sdpa")
            ns = sorted(n for n in ours if ours[n] is not None and exact.get(n) is not None)
            key = f"{family} m={m} {threads} thread(s) {timing[:-3]}"
            if not ns:
                result[key] = "not measured (no fused kernel on this device)"
                continue
            best = "not reached"
            for n in reversed(ns):
                if ours[n] < exact[n]:
                    best = n
                else:
                    break
            result[key] = best
    return result


def markdown(env, rows, cross, goals):
    lines = [f"# armour-bench linear_attention — {env['device']} ({env['device_type']}), {env['dtype']}", "",
             *record.environment_lines(env),
             f"Load average (1 min): {env.get('load_avg_1min')} before, {env.get('load_avg_1min_end')} after  ", "",
             "Medians of interleaved rounds; ± is the interquartile range in % of the median; "
             "× columns: armour_kernels' speed-up (their time / ours).", "",
             "| family | m | shape | B | n | threads | impl | fwd ms | fwd+bwd ms | fwd × ref | fwd+bwd × ref | "
             "fwd × SDPA | fwd+bwd × SDPA | peak MiB | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(x, spec=".3f"):
        return "–" if x is None else format(x, spec)

    def timed(r, timing):
        ms = r.get(f"{timing}_ms")
        return "–" if ms is None else f"{ms:.3f} ±{r[f'{timing}_iqr_pct']:.0f}%"

    for r in rows:
        lines.append(f"| {r['family']} | {r['m']} | {r['label']} | {r['B']} | {r['n']} | {r['threads']} | {r['impl']} | "
                     f"{timed(r, 'fwd')} | {timed(r, 'fwd_bwd')} | {fmt(r.get('fwd_vs_python_ref'), '.2f')} | "
                     f"{fmt(r.get('fwd_bwd_vs_python_ref'), '.2f')} | {fmt(r.get('fwd_vs_sdpa'), '.2f')} | "
                     f"{fmt(r.get('fwd_bwd_vs_sdpa'), '.2f')} | {fmt(r.get('peak_mib'), '.1f')} | {r['status']} |")
    lines += ["", "Targets (fwd+bwd vs python_ref eager):", ""]
    for key, checks in goals.items():
        lines += [f"- {key}: " + "; ".join(f"{goal}: {verdict}" for goal, verdict in checks.items())]
    lines += ["", "Crossover (smallest n of the single-sequence sweep from which the fused op beats SDPA):", ""]
    lines += [f"- {key}: {value}" for key, value in cross.items()]
    return "\n".join(lines) + "\n"


def _thread_counts(arg, device):
    if device != "cpu":
        return [torch.get_num_threads()]
    counts = [int(t) for t in (arg or "1,2").split(",")]
    return sorted({max(1, min(t, os.cpu_count() or t)) for t in counts})


def run(args) -> int:
    device = args.device.split(":")[0]
    if device == "cuda" and not torch.cuda.is_available():
        print("armour-bench linear_attention: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    dtype_name = args.dtype or ("fp16" if device == "cuda" else "fp32")
    dtype = DTYPES[dtype_name]
    repeats = args.repeats or (7 if device == "cpu" else 10)
    families = [f for f in args.families.split(",") if f]
    env = dict(record.environment(device), dtype=dtype_name)
    threads_before = torch.get_num_threads()
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    try:
        for family in families:
            for m in (args.landmarks if family == "nystrom" else [FEATURES]):
                impls = implementations(family, device, m)
                for label, batch, n in sweep(args.quick, device, args.max_n, args.ns, not args.no_paper):
                    inputs = [torch.randn(batch, n, HEADS, DIM_HEAD, device=device, dtype=dtype, generator=gen)
                              for _ in range(3)]
                    extra = _extra(family, device, dtype)
                    available = {name: fn for name, fn in impls.items() if fn is not None}
                    for threads in _thread_counts(args.threads, device):
                        torch.set_num_threads(threads)
                        try:
                            timed = measure(available, inputs, extra, device, repeats)
                            status = "ok"
                        except torch.OutOfMemoryError:
                            timed, status = {}, "out of memory"
                            torch.cuda.empty_cache()
                        for impl in IMPLS:
                            row = dict(family=family, m=m, label=label, B=batch, n=n, H=HEADS, d=DIM_HEAD,
                                       threads=threads, impl=impl)
                            if impls.get(impl) is None:
                                row["status"] = "unavailable (no kernel for this device)"
                            elif impl not in timed:
                                row["status"] = status
                            else:
                                fwd, fwd_iqr, fwd_bwd, fwd_bwd_iqr = timed[impl]
                                row.update(fwd_ms=fwd, fwd_iqr_pct=fwd_iqr, fwd_bwd_ms=fwd_bwd,
                                           fwd_bwd_iqr_pct=fwd_bwd_iqr, status="ok")
                                if device == "cuda":
                                    row["peak_mib"] = peak_mib(impls[impl], inputs, extra)
                            rows.append(row)
                            print(f"{family:9s} m={m:<4d} {label:5s} B={batch:<3d} n={n:<6d} t={threads} "
                                  f"{impl:15s} fwd {row.get('fwd_ms', float('nan')):9.3f} ms  fwd+bwd "
                                  f"{row.get('fwd_bwd_ms', float('nan')):9.3f} ms  {row['status']}", flush=True)
    finally:
        torch.set_num_threads(threads_before)
    env["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    add_ratios(rows)
    cross, goals = crossovers(rows), targets(rows)
    table = markdown(env, rows, cross, goals)
    print(table)
    out = record.resolve_out(args.out, device)
    if out is not None:
        record.write_report(Path(out) / f"linear_attention-{device}-{dtype_name}",
                            dict(environment=env, rows=rows, crossover=cross, targets=goals), table)
    return 0
