"""`armour-bench kernels`: the attention op against PyTorch SDPA and python_ref on the same work.

For each shape (DeiT-Ti/S/B at N=197, long sequences N=1024…8192 with d=64 and 128, LeViT
blocks) and value source, times the forward and forward+backward of
  - armour_kernels.attention (Triton on CUDA, the C++ extension on CPU when built),
  - F.scaled_dot_product_attention doing the same work (regular; Armour as SDPA(q, k, q);
    "q+v" as SDPA(q, k, cat(q, v)); the LeViT bias as a float mask gathered from its table),
  - python_ref eager (materialises the N×N scores).
Reports the median time in ms and TFLOP/s of useful work: forward 2·B·H·Nq·Nk·(Dk + Dv) flops
(two products), forward+backward 3× that (the backward's four products, not counting the
recomputation of the scores). Inputs in the (B, Nq, H, D) layout; SDPA and python_ref get
transposed views of the same tensors, as in a timm model.
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="small batches and fewer shapes (a smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (median reported)")
    parser.add_argument("--out", type=Path, default=None, help="folder for kernels-<device>-<dtype>.json / .md")


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
    """q, k, v in the (B, N, H, D) layout, and the LeViT table and index when the shape has a bias."""
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, nq, heads, dk, device=device, dtype=dtype, generator=gen)
    k = torch.randn(batch, nk, heads, dk, device=device, dtype=dtype, generator=gen)
    v = torch.randn(batch, nk, heads, dv, device=device, dtype=dtype, generator=gen)
    table = index = None
    if bias == "table":
        index, entries = _levit_index(nq, nk, device)
        table = torch.randn(heads, entries, device=device, dtype=dtype, generator=gen)
    return q, k, v, table, index


def implementations(backend):
    from python_ref.attention import attention as ref_attention
    from python_ref.attention import levit_bias

    from ..ops.attention import attention

    def ours(q, k, v, value, table, index):
        return attention(q, k, v if "v" in value else None, value=value, bias=table, bias_index=index,
                         backend=backend)

    def heads_first(q, k, v, table, index):
        """(B, H, N, D) views (no copies: SDPA and matmul read strides too) and the gathered bias."""
        mask = levit_bias(table, index) if table is not None else None
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask

    def sdpa(qh, kh, vh, value, mask):
        parts = {"v": vh, "q": qh, "k": kh}
        values = [parts[p] for p in value.split("+")]
        value_matrix = torch.cat(values, -1) if len(values) > 1 else values[0]
        if mask is not None:
            mask = mask.unsqueeze(0).expand(qh.shape[0], -1, -1, -1)
        return F.scaled_dot_product_attention(qh, kh, value_matrix, attn_mask=mask)

    def reference(qh, kh, vh, value, mask):
        return ref_attention(qh, kh, vh if "v" in value else None, value=value, bias=mask)

    return {"armour_kernels": (ours, None), "sdpa": (sdpa, heads_first), "python_ref": (reference, heads_first)}


# ----------------------------------------------------------------------------- timing

def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device, repeats):
    fn()  # warm-up: compilation, autotuning, caches
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_case(impl, prepare, inputs, value, device, repeats):
    """(forward ms, forward+backward ms) of one implementation."""
    q, k, v, table, index = inputs
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    table_leaf = table.detach().requires_grad_() if table is not None else None
    def run():
        if prepare is None:
            return impl(*leaves, value, table_leaf, index)
        qh, kh, vh, mask = prepare(*leaves, table_leaf, index)
        return impl(qh, kh, vh, value, mask)

    def forward():
        with torch.no_grad():
            run()

    def forward_backward():
        out = run()
        out.backward(torch.ones_like(out))

    return median_ms(forward, device, repeats), median_ms(forward_backward, device, repeats)


# ----------------------------------------------------------------------------- driver

def _backend_for(device):
    from .._backend import cpu_has_op
    if device.startswith("cuda"):
        return "triton"
    return "cpu" if cpu_has_op("attention") else None


def run(args) -> int:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("armour-bench kernels: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    dtype_name = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")
    dtype = DTYPES[dtype_name]
    repeats = args.repeats or (3 if device == "cpu" else (10 if args.quick else 30))
    backend = _backend_for(device)
    impls = implementations(backend)
    rows = []
    for name, batch, nq, nk, heads, dk, dv, values, bias in shapes(args.quick, device.split(":")[0]):
        for value in values:
            widths = {"q": dk, "k": dk, "v": dv}
            dtot = sum(widths[p] for p in value.split("+"))
            flops = 2 * batch * heads * nq * nk * (dk + dtot)  # q·kᵀ and P·value, 2 flops a multiply-add
            inputs = make_inputs(batch, nq, nk, heads, dk, dv, bias, device, dtype)
            for impl_name, (impl, prepare) in impls.items():
                row = dict(shape=name, B=batch, Nq=nq, Nk=nk, H=heads, Dk=dk, Dv=dv, value=value,
                           bias=bias or "none", impl=impl_name)
                if impl_name == "armour_kernels" and backend is None:
                    row.update(status="unavailable (no CPU kernel built: armour_kernels._C)")
                else:
                    try:
                        fwd, fwd_bwd = time_case(impl, prepare, inputs, value, device, repeats)
                        row.update(status="ok", fwd_ms=fwd, fwd_bwd_ms=fwd_bwd,
                                   fwd_tflops=flops / fwd / 1e9, fwd_bwd_tflops=3 * flops / fwd_bwd / 1e9)
                    except torch.OutOfMemoryError:
                        row.update(status="out of memory")
                        torch.cuda.empty_cache()
                    except (RuntimeError, NotImplementedError) as error:
                        row.update(status=f"failed: {str(error).splitlines()[0][:120]}")
                rows.append(row)
                print(_format_row(row), flush=True)
    report = dict(command="armour-bench " + " ".join(sys.argv[1:]) if sys.argv else "armour-bench kernels",
                  device=_device_name(device), dtype=dtype_name, repeats=repeats, versions=_versions(),
                  backend=backend, rows=rows)
    table = markdown(report)
    print()
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"kernels-{device.split(':')[0]}-{dtype_name}{'-quick' if args.quick else ''}"
        (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.out / f"{stem}.md").write_text(table + "\n")
        print(f"wrote {args.out / stem}.json and .md")
    return 0


def _device_name(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _versions():
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton
        versions["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    return versions


def _format_row(row):
    head = f"{row['shape']:<24} value={row['value']:<4} {row['impl']:<15}"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    return (f"{head} fwd {row['fwd_ms']:9.3f} ms {row['fwd_tflops']:7.3g} TFLOP/s   "
            f"fwd+bwd {row['fwd_bwd_ms']:9.3f} ms {row['fwd_bwd_tflops']:7.3g} TFLOP/s")


def markdown(report):
    lines = [f"# armour-bench kernels — {report['device']}, {report['dtype']}", "",
             f"Command: `{report['command']}`  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ",
             f"armour_kernels backend: {report['backend'] or 'none'}; median of {report['repeats']} runs; "
             "TFLOP/s of useful work (forward 2·B·H·Nq·Nk·(Dk+Dv), fwd+bwd 3×).", "",
             "| shape | B | Nq×Nk | H | Dk/Dv | value | bias | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if r["status"] == "ok":
            cells = (f"{r['fwd_ms']:.3f} | {r['fwd_tflops']:.3g} | {r['fwd_bwd_ms']:.3f} | "
                     f"{r['fwd_bwd_tflops']:.3g}")
        else:
            cells = f"{r['status']} | | | "
        lines.append(f"| {r['shape']} | {r['B']} | {r['Nq']}×{r['Nk']} | {r['H']} | {r['Dk']}/{r['Dv']} | "
                     f"{r['value']} | {r['bias']} | {r['impl']} | {cells} |")
    return "\n".join(lines)
