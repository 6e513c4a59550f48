"""`armour-bench summary`: one readable table of the headline numbers of a results folder.

Reads the JSON reports of the main job, `armour-bench kernels` and `armour-bench models` in a
results folder (default: this device's, bench/results/<device>/) and writes SUMMARY.md there:
the serving targets (`optimize()` against onnxruntime, OpenVINO and torch.compile; the eager
patched model against timm eager) from the main job, the attention op's speed-up over SDPA, each
model's fused path against every peer measured in the same run, and whether each target is met.
Nothing is timed here.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import record

PEERS = ("timm-eager", "timm-reparam", "timm-compile", "onnxruntime")
LABELS = {("levit_128s", "regular"): "LeViT-128S", ("levit_128s", "armour"): "Armour-128S",
          ("levit_128s", "armour_plus"): "Armour+-128S", ("levit_192", "regular"): "LeViT-192",
          ("levit_192", "armour"): "Armour-192", ("levit_192", "armour_plus"): "Armour+-192",
          ("deit_tiny", "armour"): "Armour-Ti"}
# (what, model, variant, dtype, peer, at least): the fused eager models' targets, checked in every models run
TARGETS = (("Armour-Ti fp32 vs timm DeiT-Ti eager", "deit_tiny", "armour", "fp32", "timm-eager", 1.25),
           ("LeViT-128S fp32 vs onnxruntime fp32", "levit_128s", "regular", "fp32", "onnxruntime", 1.0),
           ("LeViT-128S fp32 vs torch.compile", "levit_128s", "regular", "fp32", "timm-compile", 1.15),
           ("LeViT-128S bf16 vs onnxruntime fp32", "levit_128s", "regular", "bf16", "onnxruntime", 2.0),
           ("Armour-Ti bf16 vs onnxruntime fp32 (DeiT-Ti)", "deit_tiny", "armour", "bf16", "onnxruntime", 2.0))
# Attention op vs SDPA: {dtype: (forward, forward+backward)} at least.
KERNEL_TARGETS = {"fp32": (1.3, 1.5), "bf16": (1.5, 1.5), "fp16": (1.5, 1.5)}
# (what, main-job group, batch, threads, dtype, peer impl, at least): ours optimize against the peer.
SERVING_TARGETS = (
    ("LeViT-128S vs onnxruntime", "LeViT-128S", 1, 1, "fp32", "onnxruntime", 1.0),
    ("LeViT-128S vs OpenVINO", "LeViT-128S", 1, 1, "fp32", "openvino", 1.0),
    ("LeViT-128S vs timm + torch.compile", "LeViT-128S", 1, 1, "fp32", "timm compile", 1.2),
    ("Armour-Ti vs onnxruntime DeiT-Ti", "DeiT-Ti", 1, 1, "fp32", "onnxruntime", 1.0),
    ("Armour-Ti vs OpenVINO DeiT-Ti", "DeiT-Ti", 1, 1, "fp32", "openvino", 1.0),
    ("LeViT-128S vs onnxruntime", "LeViT-128S", 64, 2, "fp32", "onnxruntime", 1.3),
    ("LeViT-128S vs OpenVINO", "LeViT-128S", 64, 2, "fp32", "openvino", 1.0),
    ("LeViT-128S vs OpenVINO", "LeViT-128S", 64, 2, "bf16", "openvino", 1.0),
    ("Armour-Ti vs OpenVINO DeiT-Ti", "DeiT-Ti", 64, 2, "fp32", "openvino", 1.1),
    ("Armour-Ti vs OpenVINO DeiT-Ti", "DeiT-Ti", 64, 2, "bf16", "openvino", 1.2),
    ("Armour-Ti vs timm DeiT-Ti + torch.compile", "DeiT-Ti", 64, 2, "fp32", "timm compile", 1.3),
    ("Armour-Ti vs timm DeiT-Ti + torch.compile", "DeiT-Ti", 64, 2, "bf16", "timm compile", 1.3),
)


def add_arguments(parser):
    parser.add_argument("--results", type=Path, default=None, help="results folder (default: this device's)")
    parser.add_argument("--notes", type=Path, default=None, help="a markdown file appended as a Notes section")


def _fused(row):
    return row["mode"] in ("patched-folded", "patched") and "img_per_s" in row


def models_section(report):
    s, env = report["settings"], report["environment"]
    rows = report["rows"]
    peers = {(r["model"], r["mode"]): r["img_per_s"] for r in rows if r["mode"] in PEERS and "img_per_s" in r}
    head = f"### Models: {s['dtype']}, {env['threads']} thread(s), batch {s['batch']}"
    lines = [head, "", "| model (fused: patched + folded) | img/s | " + " | ".join(f"× {p}" for p in PEERS)
             + " |", "|---|---:|" + "---:|" * len(PEERS)]
    for r in rows:
        if not _fused(r):
            continue
        base = "deit_tiny" if r["model"] == "deit_tiny" else r["model"]
        cells = [f"{r['img_per_s'] / peers[(base, p)]:.2f}×" if (base, p) in peers else "–" for p in PEERS]
        lines.append(f"| {LABELS.get((r['model'], r['variant']), r['model'])} | {r['img_per_s']:.1f} | "
                     + " | ".join(cells) + " |")
    names = {"levit_128s": "LeViT-128S", "levit_192": "LeViT-192", "deit_tiny": "DeiT-Ti"}
    peer_line = "; ".join(f"{names.get(m, m)} {mode} {v:.1f}" for (m, mode), v in peers.items())
    lines += ["", f"Peers (img/s, onnxruntime fp32): {peer_line}."]
    return lines


def targets_section(models):
    lines = ["| target | run | ours img/s | peer img/s | ratio | needed | met |", "|---|---|---:|---:|---:|---:|---|"]
    for what, model, variant, dtype, peer, need in TARGETS:
        for report in models:
            s = report["settings"]
            if s["dtype"] != dtype:
                continue
            rows = report["rows"]
            ours = next((r["img_per_s"] for r in rows if r["model"] == model and r["variant"] == variant
                         and _fused(r)), None)
            other = next((r["img_per_s"] for r in rows if r["model"] == model and r["mode"] == peer
                          and "img_per_s" in r), None)
            run = f"{report['environment']['threads']} thr, batch {s['batch']}"
            if ours is None or other is None:
                lines.append(f"| {what} | {run} | | | not measured | {need:.2f}× | – |")
                continue
            ratio = ours / other
            lines.append(f"| {what} | {run} | {ours:.1f} | {other:.1f} | {ratio:.2f}× | {need:.2f}× | "
                         f"{'yes' if ratio >= need else 'no'} |")
    return lines


def kernels_section(kernels):
    lines = ["| dtype | threads | shape (B, N, H, Dk/Dv) | value | bias | fwd ms (ours / SDPA) | fwd × | fwd TFLOP/s "
             "| fwd+bwd ms (ours / SDPA) | fwd+bwd × | targets met (fwd ≥ 1.3× fp32, 1.5× bf16; fwd+bwd ≥ 1.5×) |",
             "|---|---:|---|---|---|---|---:|---:|---|---:|---|"]
    for report in sorted(kernels, key=lambda r: (r["dtype"], r["environment"]["threads"])):
        rows = report["rows"]
        for r in rows:
            if r["impl"] != "armour_kernels" or "fwd_vs_sdpa" not in r:
                continue
            sdpa = next(x for x in rows if x["impl"] == "sdpa" and (x["shape"], x["value"]) == (r["shape"], r["value"]))
            needs = KERNEL_TARGETS.get(report["dtype"], (1.3, 1.5))
            met = " / ".join("yes" if r.get(k, 0) >= v else "no" for k, v in zip(("fwd_vs_sdpa", "fwd_bwd_vs_sdpa"), needs))
            tflops = f"{r['fwd_tflops']:.3f}" if "fwd_tflops" in r else "–"
            lines.append(f"| {report['dtype']} | {r.get('threads', report['environment']['threads'])} | {r['shape']} "
                         f"({r['B']}, {r['Nq']}×{r['Nk']}, {r['H']}, {r['Dk']}/{r['Dv']}) | {r['value']} | {r['bias']} "
                         f"| {r['fwd_ms']:.1f} / {sdpa['fwd_ms']:.1f} | {r['fwd_vs_sdpa']:.2f}× | {tflops} "
                         f"| {r['fwd_bwd_ms']:.1f} / {sdpa['fwd_bwd_ms']:.1f} | {r['fwd_bwd_vs_sdpa']:.2f}× | {met} |")
    return lines


def linear_attention_section(reports):
    """The Nyström / Performer targets `armour-bench linear_attention` checks, as it wrote them."""
    lines = ["| family, threads | target | result |", "|---|---|---|"]
    for report in reports:
        for case, targets in report["targets"].items():
            lines += [f"| {case} | {what} | {result} |" for what, result in targets.items()]
    return lines


def _ratio_text(r: dict) -> str:
    return f"{r['ratio']:.2f}× ({r['ratio_low']:.2f}–{r['ratio_high']:.2f})"


def serving_section(mains):
    """Ours optimize vs each peer of the main job, and ours eager vs timm eager in every case."""
    rows = [r for report in mains for r in report["rows"]]
    lines = ["| target | case | ours img/s | peer img/s | optimize ÷ peer (IQR) | needed | met |",
             "|---|---|---:|---:|---|---:|---|"]
    for what, group, batch, threads, dtype, peer, need in SERVING_TARGETS:
        case = [r for r in rows if (r["group"], r["batch"], r["threads"], r.get("dtype_run", r["dtype"]))
                == (group, batch, threads, dtype)]
        ours = next((r for r in case if r["impl"] == "ours optimize" and "img_per_s" in r), None)
        other = next((r for r in case if r["impl"] == peer and "optimize_vs_this" in r), None)
        where = f"{dtype}, batch {batch}, {threads} thr"
        if ours is None or other is None:
            lines.append(f"| {what} | {where} | | | not measured | {need:.2f}× | – |")
            continue
        r = other["optimize_vs_this"]
        lines.append(f"| {what} | {where} | {ours['img_per_s']:.1f} | {other['img_per_s']:.1f} | {_ratio_text(r)} | "
                     f"{need:.2f}× | {'yes' if r['ratio'] >= need else 'no'} |")
    for r in rows:
        if r["impl"] == "ours eager" and r.get("vs_timm_eager"):
            v = r["vs_timm_eager"]
            lines.append(f"| {r['model']} eager patched vs timm eager | {r.get('dtype_run', r['dtype'])}, batch "
                         f"{r['batch']}, {r['threads']} thr | {r['img_per_s']:.1f} | | {_ratio_text(v)} | 1.00× | "
                         f"{'yes' if v['ratio'] >= 1.0 or not v['clear'] else 'no'} |")
    return lines


def summary(folder: Path) -> str:
    reports = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    kernels = [r for r in reports if "backend" in r and "rows" in r and r["rows"] and "fwd_ms" in r["rows"][0]]
    models = sorted((r for r in reports if "settings" in r and "patched_backend" in r.get("settings", {})),
                    key=lambda r: (-r["environment"]["threads"], r["settings"]["dtype"] != "fp32"))
    mains = [r for r in reports if "cases" in r and "impls" in r and "rows" in r]
    linear = [r for r in reports if "targets" in r and "crossover" in r]
    env = (mains or models or kernels)[0]["environment"]
    lines = [f"# Benchmark summary — {env['device']}", "", *record.environment_lines(env)[:2], "",
             "Ratios are speeds (higher is better), every ratio between implementations timed interleaved in the "
             "same process. Fused = `armour_kernels.patch` + `fold_batchnorm` (LeViT) on the C++ CPU kernels; "
             "onnxruntime = the timm model (LeViT reparameterised) exported to ONNX, CPU provider, fp32, "
             "intra-op threads = the run's threads; OpenVINO with its precision hint and thread count set to the "
             "run's.", ""]
    if mains:
        lines += ["## Serving: `optimize()` against what users deploy with (the main job)", "",
                  *serving_section(mains), ""]
    if models:
        lines += ["## Targets: fused eager models (`armour-bench models`)", "", *targets_section(models), ""]
    if kernels:
        lines += ["## Attention op vs SDPA", "", *kernels_section(kernels), ""]
    if linear:
        lines += ["## Nyström and Performer vs python_ref eager (`armour-bench linear_attention`)", "",
                  *linear_attention_section(linear), ""]
    if models:
        lines += ["## Models", ""]
        for report in models:
            lines += models_section(report) + [""]
    commands = [r["environment"]["command"] for r in mains + kernels + linear + models if "command" in r["environment"]]
    lines += ["## Commands", "", *(f"- `{c}`" for c in dict.fromkeys(commands))]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    folder = args.results or record.results_dir("cpu")
    text = summary(Path(folder))
    if args.notes is not None:
        text += "\n## Notes\n\n" + args.notes.read_text()
    (Path(folder) / "SUMMARY.md").write_text(text)
    print(text)
    print(f"wrote {Path(folder) / 'SUMMARY.md'}")
    return 0
