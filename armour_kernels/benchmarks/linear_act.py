"""`armour-bench linear_act`: the CPU Linear + bias + Hardswish op vs F.hardswish(F.linear(...)).

LeViT-128S / LeViT-192 MLP first-layer shapes (batch 64: 64·196 rows, and the stage-2 64·49
rows), fp32 and bf16, every GEMM choice of the op (onednn_fused, onednn, aten) next to the
eager pair and the bare GEMM, timed interleaved (timing.interleaved_ms). CPU only: on CUDA the
LeViT MLP runs the Triton kernel inside `armour-bench models`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from . import record
from .timing import interleaved_ms

SHAPES = ((64 * 196, 128, 256), (64 * 196, 192, 384), (64 * 49, 256, 512))
GEMMS = ("onednn_fused", "onednn", "aten")


def add_arguments(parser):
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions (median reported)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated fp32,bf16")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for linear_act-cpu.json / .md (`auto`: bench/results/<device>/)")


def run(args) -> int:
    from .. import cpu
    from ..cpu.linear_act import linear_hardswish_forward
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    env, rows = record.environment("cpu"), []
    for rows_, cin, cout in SHAPES:
        for dtype_name in args.dtypes.split(","):
            dtype = dtypes[dtype_name]
            x = torch.randn(rows_, cin).to(dtype)
            w = (torch.randn(cout, cin) / cin ** 0.5).to(dtype)
            b = torch.randn(cout).to(dtype)
            steps = {"F.hardswish(F.linear)": lambda: F.hardswish(F.linear(x, w, b)),
                     "mm alone": lambda: torch.mm(x, w.t())}
            if cpu.has_op("linear_hardswish"):
                steps.update({g: (lambda g=g: linear_hardswish_forward(x, w, b, gemm=g)) for g in GEMMS})
            times = interleaved_ms(steps, "cpu", args.repeats)
            eager = times["F.hardswish(F.linear)"]
            row = dict(rows=rows_, cin=cin, cout=cout, dtype=dtype_name, ms=times,
                       speedup={k: eager / t for k, t in times.items()})
            rows.append(row)
            print(f"{rows_}x{cin}->{cout} {dtype_name}: " + " | ".join(
                f"{k} {t:.2f} ms ({eager / t:.2f}x)" for k, t in times.items()), flush=True)
    table = markdown(env, rows)
    print(table)
    out = record.resolve_out(args.out, "cpu")
    if out is not None:
        record.write_report(Path(out) / "linear_act-cpu", dict(environment=env, rows=rows), table)
    return 0


def markdown(env, rows):
    names = list(dict.fromkeys(k for r in rows for k in r["ms"]))
    lines = ["# armour-bench linear_act — Linear + bias + Hardswish on CPU", "", *record.environment_lines(env),
             "Median ms (speed-up over F.hardswish(F.linear)); the op's GEMM choices are onednn_fused, onednn, "
             "aten.", "", "| rows×in→out | dtype | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = " | ".join(f"{r['ms'][n]:.2f} ({r['speedup'][n]:.2f}×)" if n in r["ms"] else "" for n in names)
        lines.append(f"| {r['rows']}×{r['cin']}→{r['cout']} | {r['dtype']} | {cells} |")
    return "\n".join(lines) + "\n"
