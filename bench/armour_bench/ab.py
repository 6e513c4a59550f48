"""`armour-bench ab`: one switch of the CPU kernels on and off in whole served models.

Each model is prepared once with `optimize()` (what a server runs), then timed with the switch on
and off by turns — every round calls it once each way, the order alternating — so both sides see
the same machine state, caches and clock; the table gives each side's median ms with its
interquartile range and the per-round ratio off / on (> 1: the switch on is faster), with its IQR.

Switches (`--switch`), the dense layers' task kernels of our own (docs/dense.md) on, or oneDNN's
micro-kernel per tile (off):
  dense_amx   bf16 dense layers on AMX tiles ("The AMX task kernel"); needs the amx dispatch path.
  dense_f32   fp32 dense layers of at most 64 rows on AVX-512, all on AVX2 ("The fp32 task kernel"); needs
              an AVX2 or AVX-512 dispatch path with brgemm. Measure it with --dtype fp32, and on AVX2
              with --dtype bf16 too (bf16 weights there are widened to fp32 by the same kernel).

The report is ab-<switch>.json / .md for the switch's own dtype (SWITCH_DTYPES), ab-<switch>-<dtype> for
another.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import record
from .timing import interleaved, ratio

IMAGE_SIZE = 224
MODELS = {"LeViT-128S": ("levit_128s", None), "Armour-Ti": ("deit_tiny_patch16_224", "armour"),
          "DeiT-Ti": ("deit_tiny_patch16_224", None)}


def _dense_task(kind: str):
    def switch(on: bool):
        from armour_kernels import cpu
        return cpu.use_dense_task(kind, on)
    return switch


SWITCHES = {"dense_amx": _dense_task("amx"), "dense_f32": _dense_task("f32")}
SWITCH_DTYPES = {"dense_amx": "bf16", "dense_f32": "fp32"}


def report_name(switch: str, dtype: str) -> str:
    return f"ab-{switch}" if SWITCH_DTYPES.get(switch) == dtype else f"ab-{switch}-{dtype}"


def _available(switch: str) -> str | None:
    """Why the switch cannot be measured here, or None."""
    from armour_kernels import cpu
    kind = switch.removeprefix("dense_")
    if not cpu.dense_task_available(kind):
        return f"the {kind} dense task kernel does not run here under the current dispatch path"
    return None


def add_arguments(parser):
    parser.add_argument("--switch", default="dense_amx", choices=sorted(SWITCHES))
    parser.add_argument("--models", default="LeViT-128S,Armour-Ti", help=f"comma-separated of {', '.join(MODELS)}")
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timed calls per model")
    parser.add_argument("--out", type=Path, default=None, help="folder for ab-<switch>[-<dtype>].json / .md "
                        "(`auto`: bench/results/<device>/)")


def _model(name: str):
    import timm

    from armour_kernels import armourize, fold_batchnorm
    base, variant = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(base).eval()
    if base.startswith("levit"):
        fold_batchnorm(model)
    return model if variant is None else armourize(model, variant, backend=None).eval()


def run(args) -> int:
    from armour_kernels import optimize
    torch.set_num_threads(args.threads)
    missing = _available(args.switch)
    if missing:
        print(f"armour-bench ab: {missing}")
        return 0
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    switch = SWITCHES[args.switch]
    env, rows = record.environment("cpu", getattr(args, "argv", None)), []
    for name in args.models.split(","):
        example = torch.randn(args.batch, 3, IMAGE_SIZE, IMAGE_SIZE)
        served = optimize(_model(name), example, dtype=dtype)

        def call(on: bool, served=served, example=example):
            def run_once():
                with switch(on), torch.inference_mode():
                    served(example)
            return run_once
        timings = interleaved({"on": call(True), "off": call(False)}, "cpu", budget_s=args.budget, warmup=3)
        r = ratio(timings["on"], timings["off"])
        row = dict(model=name, dtype=args.dtype, batch=args.batch, threads=args.threads,
                   on_ms=timings["on"].median, on_iqr=[timings["on"].q1, timings["on"].q3],
                   off_ms=timings["off"].median, off_iqr=[timings["off"].q1, timings["off"].q3],
                   rounds=len(timings["on"].samples), off_over_on=r.median, off_over_on_iqr=[r.low, r.high])
        rows.append(row)
        print(f"{name} {args.dtype} batch {args.batch}: on {row['on_ms']:.3f} ms, off {row['off_ms']:.3f} ms, "
              f"off/on {r.text()}", flush=True)
    table = markdown(env, args.switch, rows)
    print(table)
    out = record.resolve_out(args.out, "cpu")
    if out is not None:
        record.write_report(Path(out) / report_name(args.switch, args.dtype),
                            dict(environment=env, switch=args.switch, rows=rows), table)
    return 0


def markdown(env, switch: str, rows: list) -> str:
    lines = [f"# armour-bench ab — `{switch}` on and off in served models", "", *record.environment_lines(env), "",
             "Each model prepared once with optimize(); every round calls it with the switch on and off (order "
             "alternating). Median ms per call [IQR]; off / on is the median per-round ratio [IQR] (> 1: on is "
             "faster).", "",
             "| model | dtype | batch | threads | on ms | off ms | off / on | rounds |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['threads']} | {r['on_ms']:.3f} "
                     f"[{r['on_iqr'][0]:.3f}–{r['on_iqr'][1]:.3f}] | {r['off_ms']:.3f} "
                     f"[{r['off_iqr'][0]:.3f}–{r['off_iqr'][1]:.3f}] | {r['off_over_on']:.3f} "
                     f"[{r['off_over_on_iqr'][0]:.3f}–{r['off_over_on_iqr'][1]:.3f}] | {r['rounds']} |")
    return "\n".join(lines) + "\n"
