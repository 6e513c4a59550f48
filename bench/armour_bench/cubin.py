"""`armour-bench cubin`: every Triton kernel compiled for an H100 (sm_90) or an A100 (sm_80) without a GPU.

For each representative problem (DeiT / LeViT attention shapes, head dims 16–256, LeViT MLP
GEMMs, the Nyström and Performer paper configs) the real launchers run on CPU tensors under
`armour_bench.offline_compile.compiling_launches`, so every config the autotuner could pick is
compiled with the signature it would really get, and ptxas reports registers, spills and shared
memory, each launch specialised as a GPU launch would be (`offline_compile.launch_specialisation`),
and how long each compile takes here (what a cold cache costs a first call: the autotuner compiles
its shortlist of each key). Every path: each value source, no / dense / broadcast / table bias,
the atomic and the deterministic bias gradients (with the table's segment sum), fp32 with IEEE
and with TF32 dots, fp16 and bf16, Nyström, Performer and linear_act.
A kernel/problem whose configs all spill is where GPU time is most likely lost; the report marks
the best config of each (the first spill-free one in the autotuner's order). Not a timing: a
check a CPU-only machine can make, and the reason the config lists and the pruner in
triton/attention.py are what they are.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from . import record

ATTENTION_CASES = [  # label, batch, nq, nk, heads, d_qk, d_v, value, bias, mask_diagonal[, deterministic]
    ("DeiT-Ti Armour", 2, 197, 197, 3, 64, 0, "q", None, False),
    ("DeiT-Ti regular", 2, 197, 197, 3, 64, 64, "v", None, False),
    ("shared_qk_nodiag d=64", 2, 197, 197, 3, 64, 64, "v", None, True),
    ("shared_kv value=k d=64", 2, 197, 197, 3, 64, 0, "k", None, False),
    ("Armour d=32", 2, 1024, 1024, 4, 32, 0, "q", None, False),
    ("Armour d=128", 2, 1024, 1024, 4, 128, 0, "q", None, False),
    ("Armour d=256", 2, 256, 256, 2, 256, 0, "q", None, False),
    ("LeViT armour q+v 16/16+32 table", 2, 196, 196, 4, 16, 32, "q+v", "table", False),
    ("LeViT armour_plus q+k 16/16+16 table", 2, 196, 196, 4, 16, 0, "q+k", "table", False),
    ("LeViT subsample 16/64 table", 2, 49, 196, 8, 16, 64, "v", "table", False),
    ("LeViT table deterministic", 16, 196, 196, 4, 16, 32, "q+v", "table", False, True),
    ("dense bias d=64", 2, 197, 197, 3, 64, 64, "v", "dense", False),
    ("broadcast bias (H, 1, Nk) atomic", 2, 197, 197, 3, 64, 64, "v", "broadcast", False),
    ("broadcast bias deterministic", 16, 197, 197, 3, 64, 64, "v", "broadcast", False, True),
]
# Other input dtypes / dot precisions, on the two model families' main paths: (label suffix,
# dtype, allow_tf32 for fp32 inputs).
DTYPE_VARIANTS = [("fp16", "float16", False), ("fp32 ieee", "float32", False), ("fp32 tf32", "float32", True)]
VARIANT_CASES = ["DeiT-Ti regular", "LeViT armour q+v 16/16+32 table"]


def attention_case(dtype, batch, nq, nk, heads, dqk, dv, value, bias, mask_diagonal, deterministic=False):
    from armour_kernels.triton.attention import attention_backward, attention_forward
    q = torch.randn(batch, nq, heads, dqk, dtype=dtype)
    k = torch.randn(batch, nk, heads, dqk, dtype=dtype)
    v = torch.randn(batch, nk, heads, dv, dtype=dtype) if dv else None
    table = index = None
    if bias == "table":
        table, index = torch.randn(heads, nk, dtype=dtype), torch.randint(0, nk, (nq, nk))
    elif bias == "dense":
        table = torch.randn(batch, heads, nq, nk, dtype=dtype)
    elif bias == "broadcast":
        table = torch.randn(heads, 1, nk, dtype=dtype)
    kw = dict(value=value, scale=None, mask_diagonal=mask_diagonal)
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        out, lse = attention_forward(q, k, v, table, index, **kw)
        attention_backward(torch.randn_like(out), q, k, v, table, index, out, lse, need_dbias=bias is not None, **kw)
    finally:
        torch.use_deterministic_algorithms(saved)


def _with_tf32(allow, thunk):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        thunk()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def linear_act_case(dtype):
    from armour_kernels.triton.linear_act import hardswish_linear_forward, linear_hardswish_forward
    for rows, cin, cout in ((256 * 196, 128, 256), (256 * 49, 256, 512)):  # LeViT-128S MLP, stage 1 and 2
        x, w, b = torch.randn(rows, cin, dtype=dtype), torch.randn(cout, cin, dtype=dtype), torch.randn(cout, dtype=dtype)
        linear_hardswish_forward(x, w, b)
        hardswish_linear_forward(x, w, b)


def linear_attention_case(dtype):
    from python_ref.performer import gaussian_orthogonal_random_matrix
    from armour_kernels.triton.nystrom import nystrom_backward, nystrom_forward
    from armour_kernels.triton.performer import performer_backward, performer_forward
    q, k, v = (torch.randn(2, 1025, 4, 32, dtype=dtype) for _ in range(3))  # the Vision Xformers config
    conv = torch.randn(4, 1, 33, 1)
    for value, mode in (("v", "clean"), ("q", "clean"), ("v", "seed")):  # seed: the pinv's maxima pre-pass
        out, saved = nystrom_forward(q, k, v, conv, num_landmarks=64, mode=mode, value=value)
        nystrom_backward(torch.randn_like(out), q, k, v, conv, saved, num_landmarks=64, mode=mode, value=value)
    projection = gaussian_orthogonal_random_matrix(110, 32)
    for kernel, mode, value in (("softmax", "clean", "v"), ("relu", "clean", "v"), ("softmax", "seed", "q")):
        out, ctx, ksum, stab = performer_forward(q, k, v, projection, kernel=kernel, mode=mode, value=value)
        performer_backward(torch.randn_like(out), q, k, v, projection, ctx, ksum, stab, kernel=kernel, mode=mode,
                           value=value)


def add_arguments(parser):
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--arch", type=int, default=90, help="compute capability to compile for (90: H100/H200, 80: A100)")
    parser.add_argument("--main-only", action="store_true", help="only --dtype, not the fp16 / fp32 variants")
    parser.add_argument("--only", default=None, help="substring of the problem labels to run")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for cubin-sm<arch>.json / .md (`auto`: bench/results/offline-sm<arch>/)")


def problems(dtype, variants=True):
    """(label, thunk) for every problem the report compiles: every case in `dtype`, then (variants)
    the main paths in the other dtypes and fp32 dot precisions."""
    items = [(case[0], (lambda case=case: attention_case(dtype, *case[1:]))) for case in ATTENTION_CASES]
    items.append(("LeViT-128S MLP / proj GEMMs", lambda: linear_act_case(dtype)))
    items.append(("Nyström / Performer n=1025 d=32", lambda: linear_attention_case(dtype)))
    if not variants:
        return items
    cases = {case[0]: case for case in ATTENTION_CASES}
    for suffix, name, tf32 in DTYPE_VARIANTS:
        other = getattr(torch, name)
        if other == dtype and not name == "float32":
            continue
        for label in VARIANT_CASES:
            items.append((f"{label} {suffix}", lambda case=cases[label], other=other, tf32=tf32:
                          _with_tf32(tf32, lambda: attention_case(other, *case[1:]))))
        items.append((f"LeViT-128S MLP / proj GEMMs {suffix}", lambda other=other, tf32=tf32:
                      _with_tf32(tf32, lambda: linear_act_case(other))))
        items.append((f"Nyström / Performer n=1025 d=32 {suffix}", lambda other=other, tf32=tf32:
                      _with_tf32(tf32, lambda: linear_attention_case(other))))
    return items


def _best(rows):
    """The first spill-free config in the launcher's own (preference) order, else the least spilling."""
    return min(rows, key=lambda r: r["spill_bytes"])


def markdown(env, results, arch) -> str:
    lines = [f"# Triton kernels compiled for sm_{arch} (no GPU): registers, spills, shared memory", "",
             *record.environment_lines(env), "",
             "Each launch is compiled with the specialisation Triton gives it at a real launch (its binder: "
             "16-divisible sizes and strides and aligned pointers as divisibility hints, unit strides as "
             "constants), through the launchers, for every config the autotuner's pruner keeps.", "",
             "Per problem and kernel: how many configs compiled, how many spill, and the best one (the first "
             "spill-free one in the autotuner's order, else the least spilling). Spills are per-thread bytes stored to local memory.", "",
             "Compile s: seconds to compile all of the kernel's configs for this problem on this machine "
             "(a cold cache's first call compiles the same shortlist on the GPU host, typically faster).", "",
             "| problem | kernel | configs | spilling | best config | warps/stages | regs | spill B | smem KiB | "
             f"{'wgmma' if arch >= 90 else 'mma.sync'} | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, rows in results.items():
        for kernel in dict.fromkeys(r["kernel"] for r in rows):
            mine = [r for r in rows if r["kernel"] == kernel]
            best = _best(mine)
            lines.append(f"| {label} | {kernel} | {len(mine)} | {sum(r['spill_bytes'] > 0 for r in mine)} | "
                         f"{best['config'] or '-'} | {best['num_warps']}/{best['num_stages']} | {best['registers']} | "
                         f"{best['spill_bytes']} | {best['shared_bytes'] / 1024:.0f} | "
                         f"{best['wgmma'] if arch >= 90 else best['mma_sync']} | "
                         f"{sum(r.get('compile_s', 0.0) for r in mine):.1f} |")
    total = sum(r.get("compile_s", 0.0) for rows in results.values() for r in rows)
    count = sum(len(rows) for rows in results.values())
    lines += ["", f"{count} compiles, {total:.0f} s in all."]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    from .offline_compile import compiling_launches
    os.environ.pop("TRITON_INTERPRET", None)
    # A fresh Triton cache, so each compile's seconds are a cold cache's (not a cache hit).
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="armour-cubin-")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    env = dict(record.environment("cpu"), device=f"none (offline compile for sm_{args.arch}, {args.dtype})")
    results = {}
    for label, thunk in problems(dtype, variants=not args.main_only):
        if args.only and args.only not in label:
            continue
        record_ = []
        with compiling_launches(record_, arch=args.arch):
            thunk()
        results[label] = [r.as_dict() for r in record_]
        worst = max(r.spill_bytes for r in record_)
        print(f"{label}: {len(record_)} compiles, {sum(r.spill_bytes > 0 for r in record_)} spilling "
              f"(worst {worst} B), {sum(r.compile_s for r in record_):.0f} s", flush=True)
    table = markdown(env, results, args.arch)
    print(table)
    out = args.out
    if out is not None and str(out) == "auto":
        out = record.RESULTS_ROOT / f"offline-sm{args.arch}"
    if out is not None:
        record.write_report(Path(out) / f"cubin-sm{args.arch}-{args.dtype}", dict(environment=env, results=results),
                            table)
    return 0
