"""`armour-bench linear`: fused Nyström / Performer attention vs python_ref eager and exact SDPA.

Shapes: the Vision Xformers paper layer (n = 1025, h = 4, d = 32; Nyström m = 64 landmarks,
Performer m = 110 softmax features, 33-tap residual conv) at a training batch, then one sequence
(B = 1) of n = 1024 … 65,536 tokens. For each: median time of the forward (no grad) and of
forward+backward (gradients for q, k, v), and the peak extra memory of forward+backward on
CUDA, for
  - armour_kernels (Triton on CUDA; the C++ extension on CPU when it has the op),
  - python_ref eager (the reference functions, fp32 math for m×m work),
  - exact softmax attention, F.scaled_dot_product_attention on the same q, k, v.
The crossover is the smallest n of the sweep from which the fused op beats SDPA at every
larger n measured. Inputs in the (B, N, H, D) layout; python_ref and SDPA get transposed views.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from . import record
from .timing import median_ms

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
HEADS, DIM_HEAD, LANDMARKS, FEATURES, CONV_TAPS = 4, 32, 64, 110, 33
OPS = {"nystrom": "nystrom_attention", "performer": "performer_attention"}


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="two short sequences only (a smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--landmarks", type=int, nargs="+", default=[LANDMARKS],
                        help="Nyström landmark counts to time (default 64; the paper's Performer uses 110 features)")
    parser.add_argument("--max-n", type=int, default=65536, help="longest sequence of the sweep")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (median reported)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for linear-<device>-<dtype>.json / .md (`auto`: bench/results/<device>/)")


def sweep(quick: bool, device: str, max_n: int):
    """(label, batch, n) rows: the paper's layer at a batch, then single long sequences."""
    if quick:
        return [("seq", 1, 257), ("paper", 1 if device == "cpu" else 8, 1025)]
    rows = [("paper", 8 if device == "cpu" else 64, 1025)]
    n = 1024
    while n <= max_n:
        rows.append(("seq", 1, n))
        n *= 2
    return rows


def _backend(device: str, op: str):
    from ..backend import cpu_has_op
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


def measure(fn, inputs, extra, device, repeats):
    """(forward ms, forward+backward ms, peak extra MiB of forward+backward or None)."""
    leaves = [t.detach().requires_grad_() for t in inputs]

    def forward():
        with torch.no_grad():
            fn(*leaves, extra)

    def forward_backward():
        out = fn(*leaves, extra)
        out.backward(torch.ones_like(out))

    fwd = median_ms(forward, device, repeats, warmup=1)
    fwd_bwd = median_ms(forward_backward, device, repeats, warmup=1)
    peak = None
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward_backward()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return fwd, fwd_bwd, peak


def crossovers(rows):
    """Per (family, m, timing): the smallest n from which armour_kernels beats SDPA at every larger n."""
    result = {}
    keys = {(r["family"], r["m"]) for r in rows}
    for family, m in sorted(keys):
        for timing in ("fwd_ms", "fwd_bwd_ms"):
            ours = {r["n"]: r.get(timing) for r in rows if (r["family"], r["m"], r["impl"], r["label"]) ==
                    (family, m, "armour_kernels", "seq")}
            exact = {r["n"]: r.get(timing) for r in rows if (r["family"], r["m"], r["impl"], r["label"]) ==
                     (family, m, "sdpa", "seq")}
            ns = sorted(n for n in ours if ours[n] is not None and exact.get(n) is not None)
            if not ns:
                result[f"{family} m={m} {timing[:-3]}"] = "not measured (no fused kernel on this device)"
                continue
            best = "not reached"
            for n in reversed(ns):
                if ours[n] < exact[n]:
                    best = n
                else:
                    break
            result[f"{family} m={m} {timing[:-3]}"] = best
    return result


def markdown(env, rows, cross):
    lines = [f"# armour-bench linear — {env['device']} ({env['device_type']}), {env['dtype']}", "",
             *record.environment_lines(env), "",
             "| family | m | shape | B | n | impl | fwd ms | fwd+bwd ms | peak MiB | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(x, spec=".3f"):
        return "–" if x is None else format(x, spec)

    for r in rows:
        lines.append(f"| {r['family']} | {r['m']} | {r['label']} | {r['B']} | {r['n']} | {r['impl']} | "
                     f"{fmt(r.get('fwd_ms'))} | {fmt(r.get('fwd_bwd_ms'))} | {fmt(r.get('peak_mib'), '.1f')} | "
                     f"{r['status']} |")
    lines += ["", "Crossover (smallest n of the single-sequence sweep from which the fused op beats SDPA):", ""]
    lines += [f"- {key}: {value}" for key, value in cross.items()]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    device = args.device.split(":")[0]
    if device == "cuda" and not torch.cuda.is_available():
        print("armour-bench linear: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    dtype_name = args.dtype or ("fp16" if device == "cuda" else "fp32")
    dtype = DTYPES[dtype_name]
    repeats = args.repeats or (2 if device == "cpu" else 10)
    max_n = args.max_n if device == "cuda" else min(args.max_n, 8192)
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for family, ms in (("nystrom", args.landmarks), ("performer", [FEATURES])):
        for m in ms:
            impls = implementations(family, device, m)
            for label, batch, n in sweep(args.quick, device, max_n):
                inputs = [torch.randn(batch, n, HEADS, DIM_HEAD, device=device, dtype=dtype, generator=gen)
                          for _ in range(3)]
                extra = _extra(family, device, dtype)
                for impl_name, fn in impls.items():
                    row = dict(family=family, m=m, label=label, B=batch, n=n, H=HEADS, d=DIM_HEAD, impl=impl_name)
                    if fn is None:
                        row["status"] = "unavailable (no kernel for this device)"
                    else:
                        try:
                            fwd, fwd_bwd, peak = measure(fn, inputs, extra, device, repeats)
                            row.update(fwd_ms=fwd, fwd_bwd_ms=fwd_bwd, peak_mib=peak, status="ok")
                        except torch.OutOfMemoryError:
                            row["status"] = "out of memory"
                            torch.cuda.empty_cache()
                    rows.append(row)
                    print(f"{family:9s} m={m:<4d} {label:5s} B={batch:<3d} n={n:<6d} {impl_name:15s} "
                          f"fwd {row.get('fwd_ms', float('nan')):9.3f} ms  fwd+bwd "
                          f"{row.get('fwd_bwd_ms', float('nan')):9.3f} ms  {row['status']}", flush=True)
    cross = crossovers(rows)
    env = dict(record.environment(device), dtype=dtype_name)
    table = markdown(env, rows, cross)
    print(table)
    out = record.resolve_out(args.out, device)
    if out is not None:
        record.write_report(Path(out) / f"linear-{device}-{dtype_name}", dict(environment=env, rows=rows,
                                                                              crossover=cross), table)
    return 0
