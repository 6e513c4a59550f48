"""`armour-bench linear_act`: the CPU Linear + activation layers against what they replace.

Three tables, CPU only (on CUDA the LeViT MLP runs the Triton kernel inside `armour-bench models`):

1. The Linear + bias + Hardswish op (with autograd) vs F.hardswish(F.linear(...)): LeViT-128S /
   LeViT-192 MLP first-layer shapes at batch 64 (64·196 rows, and the stage-2 64·49 rows), fp32
   and bf16, every GEMM choice of the op (onednn_fused, onednn, aten) next to the eager pair and
   the bare GEMM, timed interleaved (timing.interleaved_ms).
2. The inference GEMM engines (`engines`): ATen's F.linear with the activation in place, oneDNN's
   fused linear on the plain weight, and on the weight prepacked once (what the inference path
   runs), at the DeiT-Ti and LeViT-128S layer shapes of one image and of batch 64. The `auto` column
   is armour_kernels' choice (plan.py: ATen below ONEDNN_MIN_FLOPS, else packed oneDNN),
   and the table says whether that choice was the faster engine: this is the measurement the
   thresholds rest on, per CPU. Beside them the serving dense op (`dense`: armour_kernels::dense on
   the weight dense_pack made, what optimize() runs) and, in fp32, MKL's packed sgemm (what
   inductor's freezing runs), with the dense op's speed-up over the fastest of the others.
3. LeViT's first stem convolution (`stem`, written apart as image_conv-cpu.json / .md): the
   image_conv op on the NCHW image against the channels-last copy + oneDNN convolution on its
   prepacked weight (what conv_chain ran before) and F.conv2d, at batch 1 and 64, fp32 and bf16.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from . import record
from .timing import interleaved_ms

SHAPES = ((64 * 196, 128, 256), (64 * 196, 192, 384), (64 * 49, 256, 512))
GEMMS = ("onednn_fused", "onednn", "aten")

# (model layer, tokens per image, in, out, activation): DeiT-Ti's qkv / MLP, LeViT-128S's stage-1
# qkv and MLP, stage-2 MLP and stage-3 attention projection.
ENGINE_LAYERS = (("DeiT-Ti qkv", 197, 192, 576, "none"), ("DeiT-Ti mlp.fc1", 197, 192, 768, "gelu"),
                 ("DeiT-Ti mlp.fc2", 197, 768, 192, "none"), ("LeViT-128S s1 qkv", 196, 128, 256, "none"),
                 ("LeViT-128S s1 mlp.fc1", 196, 128, 256, "hardswish"),
                 ("LeViT-128S s2 mlp.fc1", 49, 256, 512, "hardswish"),
                 ("LeViT-128S s3 proj", 16, 384, 384, "none"),
                 ("LeViT-128S s3 mlp.fc1", 16, 384, 768, "hardswish"))
ENGINE_BATCHES = (1, 64)
STEM_BATCHES, STEM_SIZE = (1, 64), 224  # images per call, their side


def add_arguments(parser):
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions (median reported)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated fp32,bf16")
    parser.add_argument("--tables", default="op,engines,stem",
                        help="comma-separated: op (table 1), engines (table 2), stem (table 3)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for linear_act-cpu.json / .md (`auto`: bench/results/<device>/)")


def run(args) -> int:
    from armour_kernels import cpu
    from armour_kernels.cpu.linear_act import linear_hardswish_forward
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    tables = args.tables.split(",")
    env, rows = record.environment("cpu"), []
    for rows_, cin, cout in SHAPES if "op" in tables else ():
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
    engines = [engine_row(layer, batch, dtype_name, dtypes[dtype_name], args.repeats)
               for layer in ENGINE_LAYERS for batch in ENGINE_BATCHES for dtype_name in args.dtypes.split(",")
               ] if "engines" in tables else []
    out = record.resolve_out(args.out, "cpu")
    if rows or engines:
        table = markdown(env, rows) + engines_markdown(engines)
        print(table)
        if out is not None:
            record.write_report(Path(out) / "linear_act-cpu", dict(environment=env, rows=rows, engines=engines), table)
    if "stem" in tables and cpu.has_op("image_conv"):
        stem = [stem_row(batch, name, dtypes[name], args.repeats) for batch in STEM_BATCHES for name in args.dtypes.split(",")]
        table = stem_markdown(env, stem)
        print(table)
        if out is not None:
            record.write_report(Path(out) / "image_conv-cpu", dict(environment=env, rows=stem), table)
    return 0


def stem_row(batch, dtype_name, dtype, repeats):
    """LeViT's 3 → 16 stride-2 3×3 convolution + Hardswish on STEM_SIZE² images, three ways, interleaved."""
    from armour_kernels.cpu.linear_act import cast_once, packed_conv_weight
    from armour_kernels.ops.linear_act import image_conv
    x = torch.randn(batch, 3, STEM_SIZE, STEM_SIZE).to(dtype)
    w, b = (torch.randn(16, 3, 3, 3) / 27 ** 0.5).to(dtype), torch.randn(16).to(dtype)
    packed = packed_conv_weight(w, dtype, (2, 2), (1, 1), x.shape)
    bias = cast_once(b, dtype)

    def onednn():
        h = x.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise(h, packed, bias, [1, 1], [2, 2], [1, 1], 1, "hardswish", [], "")

    steps = {"image_conv": lambda: image_conv(x, w, b, 2, 1, "hardswish"), "channels-last + oneDNN": onednn,
             "F.conv2d + hardswish": lambda: F.hardswish(F.conv2d(x, w, b, 2, 1))}
    with torch.inference_mode():
        times = interleaved_ms(steps, "cpu", max(repeats, 25))
    row = dict(batch=batch, dtype=dtype_name, ms=times,
               speedup={k: times["channels-last + oneDNN"] / t for k, t in times.items()})
    print(f"stem conv1 batch {batch} {dtype_name}: " + " | ".join(f"{k} {t * 1e3:.0f} us" for k, t in times.items()),
          flush=True)
    return row


def stem_markdown(env, rows):
    names = list(dict.fromkeys(k for r in rows for k in r["ms"]))
    lines = ["# armour-bench linear_act — LeViT's first stem convolution on CPU", "", *record.environment_lines(env),
             "3 → 16 channels, 3×3, stride 2, padding 1, Hardswish, 224×224 images. Median µs per call, timed "
             "interleaved (speed-up over the channels-last copy + oneDNN convolution on its prepacked weight).", "",
             "| batch | dtype | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = " | ".join(f"{r['ms'][n] * 1e3:.0f} ({r['speedup'][n]:.2f}×)" for n in names)
        lines.append(f"| {r['batch']} | {r['dtype']} | {cells} |")
    return "\n".join(lines) + "\n"


def engine_row(layer, batch, dtype_name, dtype, repeats):
    """One layer shape on each inference GEMM engine, timed interleaved; which is faster, what `auto` chose."""
    from armour_kernels.plan import gemm_engine
    from armour_kernels.cpu.linear_act import (ONEDNN_ACTIVATIONS, _INPLACE, _gemm, available,
                                               packed_weight)
    name, tokens, cin, cout, act = layer
    x = torch.randn(batch * tokens, cin).to(dtype)
    w, b = (torch.randn(cout, cin) / cin ** 0.5).to(dtype), torch.randn(cout).to(dtype)
    attr, algorithm = ONEDNN_ACTIVATIONS[act]
    steps = {"aten": lambda: _INPLACE[act](F.linear(x, w, b)), "auto": lambda: _gemm(x, w, b, act, dtype)}
    if available(dtype):
        packed = packed_weight(w, dtype, x.shape[0])
        steps["onednn plain"] = lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], algorithm)
        steps["onednn packed"] = lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, attr, [], algorithm)
    if dtype == torch.float32 and torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"):
        mkl_w = torch.ops.mkl._mkl_reorder_linear_weight(w, x.shape[0])
        steps["mkl packed"] = lambda: _INPLACE[act](torch.ops.mkl._mkl_linear(x, mkl_w, w, b, x.shape[0]))
    from armour_kernels import cpu
    if cpu.has_op("dense"):
        from armour_kernels.ops.linear_act import dense, dense_pack
        dense_w = dense_pack(w)
        steps["dense"] = lambda: dense(x, dense_w, b, cout, act=act)
    times = interleaved_ms(steps, "cpu", max(repeats, 25))
    flops = 2 * x.shape[0] * cin * cout
    chose = "onednn packed" if available(dtype) and gemm_engine(flops, dtype) == "onednn" else "aten"
    fastest = min(("aten", "onednn packed"), key=lambda k: times.get(k, float("inf")))
    row = dict(layer=name, batch=batch, rows=x.shape[0], cin=cin, cout=cout, act=act, dtype=dtype_name,
               mflop=flops / 1e6, ms=times, chose=chose, fastest=fastest,
               chose_vs_fastest=times[fastest] / times[chose],
               dense_speedup=(min(t for k, t in times.items() if k != "dense") / times["dense"]
                              if "dense" in times else None))
    print(f"{name} batch {batch} {dtype_name}: " + " | ".join(f"{k} {t * 1e3:.0f} us" for k, t in times.items())
          + f" -> auto={chose} ({row['chose_vs_fastest']:.2f} of the faster)", flush=True)
    return row


def markdown(env, rows):
    names = list(dict.fromkeys(k for r in rows for k in r["ms"]))
    lines = ["# armour-bench linear_act — Linear + activation layers on CPU", "", *record.environment_lines(env)]
    if not rows:
        return "\n".join(lines) + "\n"
    lines += ["## Linear + bias + Hardswish op", "",
              "Median ms (speed-up over F.hardswish(F.linear)); the op's GEMM choices are onednn_fused, onednn, aten.", "", "| rows×in→out | dtype | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = " | ".join(f"{r['ms'][n]:.2f} ({r['speedup'][n]:.2f}×)" if n in r["ms"] else "" for n in names)
        lines.append(f"| {r['rows']}×{r['cin']}→{r['cout']} | {r['dtype']} | {cells} |")
    return "\n".join(lines) + "\n"


def engines_markdown(rows):
    if not rows:
        return ""
    names = ("aten", "onednn plain", "onednn packed", "mkl packed", "auto", "dense")
    lines = ["", "## Inference GEMM engines", "",
             "Median µs per call (timed interleaved). `auto` is what the eager inference path runs (ATen below "
             "ONEDNN_MIN_FLOPS, else oneDNN on the prepacked weight); `faster / chosen` is the faster engine's "
             "time over the chosen one's (1.00: the choice was the faster). `dense` is the serving dense op on "
             "its packed weight (what optimize() runs, docs/dense.md); `dense ×` its speed-up over the fastest "
             "other column.", "",
             "| layer | batch | rows×in→out | act | dtype | MFLOP | " + " | ".join(names)
             + " | auto chose | faster / chosen | dense × |",
             "|---|---|---|---|---|---|" + "---|" * len(names) + "---|---|---|"]
    for r in rows:
        cells = " | ".join(f"{r['ms'][n] * 1e3:.0f}" if n in r["ms"] else "-" for n in names)
        dense = f"{r['dense_speedup']:.2f}" if r.get("dense_speedup") else "-"
        lines.append(f"| {r['layer']} | {r['batch']} | {r['rows']}×{r['cin']}→{r['cout']} | {r['act']} | {r['dtype']} | "
                     f"{r['mflop']:.1f} | {cells} | {r['chose']} | {r['chose_vs_fastest']:.2f} | {dense} |")
    return "\n".join(lines) + "\n"
