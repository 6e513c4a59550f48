"""`armour-bench kernels`: the attention op against PyTorch SDPA and python_ref on the same work.

For each shape (DeiT-Ti/S/B at N=197, long sequences N=1024…8192 with d=64 and 128, LeViT
blocks) and value source, times the forward and forward+backward of
  - armour_kernels.attention (Triton on CUDA, the C++ extension on CPU when built; on CPU once per
    dispatch path given with --isa, e.g. amx,avx512bf16+brgemm,avx512bf16, as
    "armour_kernels@<path>", the first one plain "armour_kernels"),
  - F.scaled_dot_product_attention doing the same work (regular; Armour as SDPA(q, k, q);
    "q+v" as SDPA(q, k, cat(q, v)); the LeViT bias as a float mask gathered from its table),
  - python_ref eager (materialises the N×N scores),
  - optionally (`--impls ...,flex`) torch.compile'd FlexAttention on the LeViT shapes, its score_mod
    reading the bias table as the kernels do (forward, and forward+backward where torch can);
    a row says why when it is unavailable.
Reports the median time in ms with its spread (interquartile range) and TFLOP/s of useful work: forward 2·B·H·Nq·Nk·(Dk + Dv) flops
(two products; 4·B·H·N²·D for Armour), forward+backward 3× that (the backward's four products,
not counting the recomputation of the scores), and each implementation's speed-up over SDPA: the
median of the per-round ratios with their interquartile range. The implementations of one shape are
timed interleaved, call by call, for a time budget (timing.interleaved: --budget seconds of rounds,
at least --repeats), so a shared machine's noise hurts them alike; the report records the load
average before and after.
q, k, v are strided views of one packed projection output, (B, N, H, Dk+Dk+Dv) as LeViT's qkv
(self-attention shapes), in the (B, N, H, D) layout; SDPA and python_ref get transposed views of
the same tensors, as in a timm model. --dtype and --threads take lists: one report per pair.

CPU example (DeiT-Ti and LeViT-128S shapes, batch 64, 1 and 2 threads, fp32 and bf16, with
FlexAttention and the hand-written paths, written to bench/results/<device>/):
    armour-bench kernels --device cpu --shapes DeiT-Ti,LeViT --batch 64 --threads 1,2 \
        --dtype fp32,bf16 --impls armour_kernels,sdpa,flex --isa amx,avx512bf16 --out auto
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from . import record
from .timing import interleaved, ratio

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="small batches and fewer shapes (a smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None,
                        help=f"comma-separated subset of {','.join(sorted(DTYPES))} (default: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="at least this many timed rounds (default 5)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed rounds per shape (default 4 on CPU, 2 on CUDA, 0.5 with --quick)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for kernels-<device>-<dtype>.json / .md (`auto`: bench/results/<device>/)")
    parser.add_argument("--shapes", default=None,
                        help="comma-separated shape-name prefixes to keep, e.g. DeiT-Ti,LeViT-128S (default: all)")
    parser.add_argument("--batch", type=int, default=None, help="batch size of every shape (default per shape)")
    parser.add_argument("--impls", default=None,
                        help="comma-separated subset of armour_kernels,sdpa,python_ref,flex (default: the first three)")
    parser.add_argument("--threads", default=None, help="CPU threads (torch.set_num_threads), e.g. 2 or 1,2")
    parser.add_argument("--isa", default=None,
                        help="CPU kernels' dispatch paths, comma-separated (e.g. amx,avx512bf16+brgemm,avx512bf16; "
                             "default: the best); each is timed as its own implementation")


# ----------------------------------------------------------------------------- shapes

def shapes(quick: bool, device: str):
    """(name, B, Nq, Nk, H, Dk, Dv, values, bias) rows; `values` are the value sources to time."""
    small = quick or device == "cpu"
    rows = []
    for name, heads in (("DeiT-Ti", 3), ("DeiT-S", 6), ("DeiT-B", 12)):
        batch = 256 if not quick else (2 if device == "cpu" else 32)
        rows.append((name, batch, 197, 197, heads, 64, 64, ("v", "q"), None))
        if small:
            break
    long = (1024,) if small else (1024, 2048, 4096, 8192)
    for d in (64, 128):
        for n in long:
            tokens = 2048 if device == "cpu" else 16384
            heads = (2 if device == "cpu" else 1024 // d)
            rows.append((f"long N={n} d={d}", max(1, tokens // n), n, n, heads, d, d, ("v", "q"), None))
        if small:
            break
    levit_batch = 256 if not quick else (2 if device == "cpu" else 32)
    # LeViT-128S stage 1 (res 14: key 16, value 32, 4 heads), LeViT-256 stage 1 (key 32, value 64),
    # the first subsample block of LeViT-128S (q on the 7×7 grid, 8 heads, value 64).
    rows.append(("LeViT-128S 14x14", levit_batch, 196, 196, 4, 16, 32, ("v", "q+v"), "table"))
    if not small:
        rows.append(("LeViT-256 14x14", levit_batch, 196, 196, 4, 32, 64, ("v", "q+v"), "table"))
    rows.append(("LeViT subsample 14->7", levit_batch, 49, 196, 8, 16, 64, ("v",), "table"))
    return rows


# ----------------------------------------------------------------------------- implementations

def _levit_index(nq, nk, device):
    from python_ref.attention import levit_bias_index
    res = int(round(nk ** 0.5))
    stride = 1 if nq == nk else 2
    return levit_bias_index(res, stride).to(device), res * res


def make_inputs(batch, nq, nk, heads, dk, dv, bias, device, dtype):
    """q, k, v in the (B, N, H, D) layout, and the LeViT table and index when the shape has a bias.

    Self-attention shapes read q, k, v in place from one packed (B, N, H, Dk+Dk+Dv) tensor, as
    a model does straight out of its qkv projection; cross shapes get separate tensors."""
    gen = torch.Generator(device=device).manual_seed(0)
    if nq == nk:
        packed = torch.randn(batch, nq, heads, 2 * dk + dv, device=device, dtype=dtype, generator=gen)
        q, k, v = packed.split([dk, dk, dv], dim=-1)
    else:
        q = torch.randn(batch, nq, heads, dk, device=device, dtype=dtype, generator=gen)
        k = torch.randn(batch, nk, heads, dk, device=device, dtype=dtype, generator=gen)
        v = torch.randn(batch, nk, heads, dv, device=device, dtype=dtype, generator=gen)
    table = index = None
    if bias == "table":
        index, entries = _levit_index(nq, nk, device)
        table = torch.randn(heads, entries, device=device, dtype=dtype, generator=gen)
    return q, k, v, table, index


def _heads_first(t):
    return t.transpose(1, 2)


def _value_matrix(qh, kh, vh, value):
    parts = {"v": vh, "q": qh, "k": kh}
    values = [parts[p] for p in value.split("+")]
    return torch.cat(values, -1) if len(values) > 1 else values[0]


def implementations(backend, isas=None):
    """{name: run(q, k, v, value, table, index)}; every run takes the (B, N, H, D) views and does its
    own layout work (timed: a model pays it too)."""
    from python_ref.attention import attention as ref_attention
    from python_ref.attention import levit_bias

    from armour_kernels.ops.attention import attention

    def ours_on(isa):
        def ours(q, k, v, value, table, index):
            if isa is not None:
                from armour_kernels import cpu
                cpu.set_isa(isa)
            return attention(q, k, v if "v" in value else None, value=value, bias=table, bias_index=index,
                             backend=backend)
        return ours

    def sdpa(q, k, v, value, table, index):
        """(B, H, N, D) views (no copies: SDPA reads strides too) and the bias gathered from its table."""
        qh, kh, vh = _heads_first(q), _heads_first(k), _heads_first(v)
        mask = levit_bias(table, index).unsqueeze(0).expand(qh.shape[0], -1, -1, -1) if table is not None else None
        return F.scaled_dot_product_attention(qh, kh, _value_matrix(qh, kh, vh, value), attn_mask=mask)

    def reference(q, k, v, value, table, index):
        qh, kh, vh = _heads_first(q), _heads_first(k), _heads_first(v)
        mask = levit_bias(table, index) if table is not None else None
        return ref_attention(qh, kh, vh if "v" in value else None, value=value, bias=mask)

    impls = {}
    for n, isa in enumerate(isas or [None]):
        impls["armour_kernels" if n == 0 else f"armour_kernels@{isa}"] = ours_on(isa)
    impls.update(sdpa=sdpa, python_ref=reference, flex=_flex_attention())
    return impls


def _flex_attention():
    """torch.compile'd FlexAttention with the LeViT table read in its score_mod (the peer that, like
    the kernels, never materialises the dense bias); raises NotImplementedError where torch lacks it."""
    compiled = {}

    def flex(q, k, v, value, table, index):
        try:
            from torch.nn.attention.flex_attention import flex_attention
        except ImportError as error:
            raise NotImplementedError(f"unavailable: torch {torch.__version__} has no FlexAttention") from error
        if table is None:
            raise NotImplementedError("n/a: FlexAttention is timed on the table-bias (LeViT) shapes only")
        if "fn" not in compiled:
            compiled["fn"] = torch.compile(flex_attention, dynamic=False)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + table[h, index[q_idx, kv_idx]]

        qh, kh, vh = _heads_first(q), _heads_first(k), _heads_first(v)
        return compiled["fn"](qh, kh, _value_matrix(qh, kh, vh, value), score_mod=score_mod)

    return flex


# ----------------------------------------------------------------------------- timing

def time_steps(impl, inputs, value):
    """(forward, forward+backward) calls of one implementation."""
    q, k, v, table, index = inputs
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    table_leaf = table.detach().requires_grad_() if table is not None else None

    def forward():
        with torch.no_grad():
            impl(q, k, v, value, table, index)

    def forward_backward():
        out = impl(*leaves, value, table_leaf, index)
        out.backward(torch.ones_like(out))

    return forward, forward_backward


# ----------------------------------------------------------------------------- driver

def _backend_for(device):
    from armour_kernels.backend import cpu_has_op
    if device.startswith("cuda"):
        return "triton"
    return "cpu" if cpu_has_op("attention") else None


def _list(text, cast=str):
    return [cast(x) for x in str(text).split(",") if x]


def run(args) -> int:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("armour-bench kernels: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    dtype_names = _list(args.dtype) if args.dtype else ["fp16" if device.startswith("cuda") else "fp32"]
    if any(d not in DTYPES for d in dtype_names):
        print(f"armour-bench kernels: --dtype takes {','.join(sorted(DTYPES))}", file=sys.stderr)
        return 2
    thread_counts = _list(args.threads, int) if args.threads else [None]
    repeats = args.repeats or 5
    budget = args.budget if args.budget is not None else (0.5 if args.quick else 4.0 if device == "cpu" else 2.0)
    backend = _backend_for(device)
    isas = _list(args.isa) if args.isa and backend == "cpu" else None
    impls = implementations(backend, isas)
    wanted = _list(args.impls) if args.impls else ["armour_kernels", "sdpa", "python_ref"]
    impls = {name: fn for name, fn in impls.items()
             if name.split("@")[0] in wanted}
    out = record.resolve_out(args.out, device)
    from armour_kernels import cpu
    previous_isa = cpu.isa() if backend == "cpu" else None
    try:
        for threads in thread_counts:
            if threads:
                torch.set_num_threads(threads)
            for dtype_name in dtype_names:
                if backend == "cpu" and isas:
                    cpu.set_isa(isas[0])
                env = record.environment(device)
                rows = _measure(args, device, DTYPES[dtype_name], (repeats, budget), backend, impls)
                env["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
                report = dict(environment=env, dtype=dtype_name, repeats=repeats, budget_s=budget, backend=backend,
                              rows=rows)
                table = markdown(report)
                print()
                print(table)
                if out is not None:
                    stem = (f"kernels-{device.split(':')[0]}-{dtype_name}{'-quick' if args.quick else ''}"
                            f"{f'-{threads}t' if args.threads else ''}")
                    record.write_report(Path(out) / stem, report, table)
    finally:
        if previous_isa is not None:
            cpu.set_isa(previous_isa)
    return 0


def _selected_shapes(args, device):
    keep = args.shapes.split(",") if args.shapes else None
    for name, batch, *rest in shapes(args.quick, device.split(":")[0]):
        if keep is None or any(name.startswith(prefix) for prefix in keep):
            yield (name, args.batch or batch, *rest)


def _measure(args, device, dtype, rounds, backend, impls):
    rows = []
    for name, batch, nq, nk, heads, dk, dv, values, bias in _selected_shapes(args, device):
        for value in values:
            widths = {"q": dk, "k": dk, "v": dv}
            dtot = sum(widths[p] for p in value.split("+"))
            flops = 2 * batch * heads * nq * nk * (dk + dtot)  # q·kᵀ and P·value, 2 flops a multiply-add
            inputs = make_inputs(batch, nq, nk, heads, dk, dv, bias, device, dtype)
            group, steps = [], {}
            for impl_name, impl in impls.items():
                row = dict(shape=name, B=batch, Nq=nq, Nk=nk, H=heads, Dk=dk, Dv=dv, value=value,
                           bias=bias or "none", impl=impl_name, threads=torch.get_num_threads())
                group.append(row)
                if impl_name.startswith("armour_kernels") and backend is None:
                    row.update(status="unavailable (no CPU kernel built: armour_kernels._C)")
                    continue
                steps[impl_name, "fwd"], steps[impl_name, "fwd_bwd"] = time_steps(impl, inputs, value)
            times = _time_group(steps, group, device, rounds)
            for row in group:
                if row.get("status", "ok") != "ok":
                    continue
                row["status"] = "ok"
                for step, work in (("fwd", flops), ("fwd_bwd", 3 * flops)):
                    timing = times.get((row["impl"], step))
                    if timing is not None:
                        row.update({f"{step}_ms": timing.median, f"{step}_iqr_pct": _iqr_pct(timing),
                                    f"{step}_tflops": work / timing.median / 1e9})
                    peer = times.get(("sdpa", step))
                    if timing is not None and peer is not None:
                        r = ratio(timing, peer)
                        row.update({f"{step}_vs_sdpa": r.median, f"{step}_vs_sdpa_low": r.low,
                                    f"{step}_vs_sdpa_high": r.high})
                rows.append(row)
                print(_format_row(row), flush=True)
    return rows


def _failure(error):
    if isinstance(error, torch.OutOfMemoryError):
        return "out of memory"
    text = str(error).strip().splitlines()
    return text[0][:160] if isinstance(error, NotImplementedError) and text else f"failed: {(text or [''])[0][:120]}"


def _iqr_pct(timing):
    return 100 * (timing.q3 - timing.q1) / timing.median


def _time_group(steps, group, device, rounds):
    """{(impl, step): Timing} of every step, interleaved for the budget. An implementation whose forward fails is left out (its row
    says why); one whose forward+backward alone fails keeps its forward time (the row notes it)."""
    failed = {}
    for (impl, step), fn in steps.items():  # one untimed call each finds the failing ones
        if impl in failed:
            continue
        try:
            fn()
        except Exception as error:  # noqa: BLE001  (a failing peer gets a row that says why, not a dead run)
            failed[impl, step] = _failure(error)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    for row in group:
        if (row["impl"], "fwd") in failed:
            row["status"] = failed[row["impl"], "fwd"]
        elif (row["impl"], "fwd_bwd") in failed:
            row["note"] = f"fwd+bwd: {failed[row['impl'], 'fwd_bwd']}"
    dead = {impl for impl, step in failed if step == "fwd"}
    steps = {key: fn for key, fn in steps.items() if key[0] not in dead and key not in failed}
    min_rounds, budget = rounds
    return interleaved(steps, device, budget_s=budget, warmup=1, min_rounds=min_rounds) if steps else {}


def _ratio(row, key):
    """"1.35× (1.30–1.41)": the median per-round ratio and its interquartile range."""
    if key not in row:
        return ""
    return f"{row[key]:.2f}× ({row[key + '_low']:.2f}–{row[key + '_high']:.2f})"


def _format_row(row):
    head = f"{row['shape']:<24} value={row['value']:<4} {row['threads']}t {row['impl']:<15}"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    text = f"{head} fwd {row['fwd_ms']:9.3f} ms {row['fwd_tflops']:7.3g} TFLOP/s   "
    if "fwd_bwd_ms" in row:
        text += f"fwd+bwd {row['fwd_bwd_ms']:9.3f} ms {row['fwd_bwd_tflops']:7.3g} TFLOP/s"
    if "fwd_vs_sdpa" in row:
        text += f"   vs sdpa: fwd {row['fwd_vs_sdpa']:.2f}x" + (
            f" fwd+bwd {row['fwd_bwd_vs_sdpa']:.2f}x" if "fwd_bwd_vs_sdpa" in row else "")
    return text + (f"   ({row['note']})" if "note" in row else "")


def _ms(row, step):
    return f"{row[step + '_ms']:.3f} ±{row.get(step + '_iqr_pct', 0):.0f}%"


def markdown(report):
    env = report["environment"]
    after = f" Load average after: {env['load_avg_1min_after']}." if "load_avg_1min_after" in env else ""
    lines = [f"# armour-bench kernels — {env['device']}, {report['dtype']}", "",
             *record.environment_lines(env),
             f"armour_kernels backend: {report['backend'] or 'none'}; every implementation of a shape timed "
             f"interleaved for ~{report.get('budget_s', 0):g} s of rounds (at least {report['repeats']}); ms: median "
             "± interquartile range in % of it; TFLOP/s of useful work (forward 2·B·H·Nq·Nk·(Dk+Dv), fwd+bwd 3×); "
             "× = speed-up over SDPA, the median of the per-round ratios (their interquartile range in brackets); "
             f"armour_kernels@<path>: the CPU kernels forced onto that dispatch path.{after}",
             "",
             "| shape | B | Nq×Nk | H | Dk/Dv | value | bias | impl | fwd ms | fwd TFLOP/s | fwd × | fwd+bwd ms "
             "| fwd+bwd TFLOP/s | fwd+bwd × |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if r["status"] == "ok" and "fwd_bwd_ms" in r:
            cells = (f"{_ms(r, 'fwd')} | {r['fwd_tflops']:.3g} | {_ratio(r, 'fwd_vs_sdpa')} | "
                     f"{_ms(r, 'fwd_bwd')} | {r['fwd_bwd_tflops']:.3g} | {_ratio(r, 'fwd_bwd_vs_sdpa')}")
        elif r["status"] == "ok":
            cells = (f"{_ms(r, 'fwd')} | {r['fwd_tflops']:.3g} | {_ratio(r, 'fwd_vs_sdpa')} | "
                     f"{r.get('note', '')} | | ")
        else:
            cells = f"{r['status']} | | | | | "
        lines.append(f"| {r['shape']} | {r['B']} | {r['Nq']}×{r['Nk']} | {r['H']} | {r['Dk']}/{r['Dv']} | "
                     f"{r['value']} | {r['bias']} | {r['impl']} | {cells} |")
    return "\n".join(lines)
