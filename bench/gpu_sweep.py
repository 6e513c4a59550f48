"""The Python half of the GPU validation (bench/gpu_validation.sh runs one step per process).

    python3 bench/gpu_sweep.py STEP [--out DIR] [--dry-run] [--only FAMILIES] [--dtype bf16]

Steps (each writes DIR/<step>.json; `report` merges them into DIR/results.json and results.md):
  env      GPU, driver, compute capability, shared memory per block, SMs; torch / triton versions
  edge     small edge-case shapes through every launcher vs python_ref (float64), each autotuned
           launch on its first config: what compute-sanitizer runs (bench/edge_cases.py)
  configs  every config of every kernel forced in turn, at the DeiT / LeViT shapes, vs python_ref
           (bench/every_config.py)
  b256     correctness at batch 256 (DeiT-Ti Armour, LeViT-128S with its table) vs python_ref
  timing   per case (DeiT-Ti Armour / regular, LeViT-128S stage 1 with the table), forward +
           backward: first call, wall and kernel-only time of the op, of SDPA (the backend it
           picks, and flash / efficient / cudnn forced where they apply) and of FlexAttention
           (the LeViT table as a score_mod, its gradient learnt); the table gradient atomic vs
           deterministic vs none; the config the autotuner chose per key (bench/gpu_timing.py)
  train    a bf16 training step (AdamW, batch 256) of Armour-Ti and LeViT-128S vs timm, peak
           memory (bench/gpu_training.py)
  sync     every launcher, warm, under torch.cuda.set_sync_debug_mode("error"): no host sync
  report   results.json + results.md from the steps' files

--dry-run: the same steps on the CPU in the Triton interpreter at tiny shapes, fp32, the
CUDA-only parts (kernel-only times, SDPA backends, FlexAttention, sync mode) recorded as skipped;
tests/triton/test_gpu_script_dry_run.py runs it so the script cannot rot.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import armour_kernels  # noqa: E402
import edge_cases  # noqa: E402
import every_config as ec  # noqa: E402
import gpu_timing  # noqa: E402
import python_ref  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _dtype(args):
    return DTYPES[args.dtype] if CUDA and not args.dry_run else torch.float32


def _log(*parts):
    print(*parts, flush=True)


def _attempt(fn, *args, **kwargs):
    """fn's result, or {"error": ...}: one failing measurement never stops its step."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # recorded in the report, the step goes on
        _log("   error:", repr(error)[:300])
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}


# ----------------------------------------------------------------------------- env

def step_env(args):
    import triton
    info = dict(python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if CUDA else None,
                cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    if CUDA:
        props = torch.cuda.get_device_properties(0)
        from armour_kernels.triton.attention import shared_memory_limit
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2 ** 30, 1),
                    shared_memory_per_block_optin=getattr(props, "shared_memory_per_block_optin", None),
                    pruner_shared_limit=shared_memory_limit(DEVICE))
    else:
        info.update(gpu=None, cpu=platform.processor() or platform.machine(), interpreter=True)
    return info


# ----------------------------------------------------------------------------- correctness

def step_edge(args):
    edge_cases.first_config_only()
    families = args.only.split(",") if args.only else ["attention", "nystrom", "performer", "linear_act"]
    start = time.time()
    done = edge_cases.run(families, _dtype(args), log=_log, first_only=args.dry_run)
    return dict(cases=done, dtype=str(_dtype(args)), seconds=round(time.time() - start, 1))


def step_configs(args):
    dtype = _dtype(args)
    configs = ec.attention_configs()
    cases = ec.GPU_ATTENTION
    if args.dry_run:  # the first config of each kernel, on one small case
        configs = [c for i, c in enumerate(configs) if i == 0 or configs[i - 1][0] != c[0]]
        cases = [("tiny q+v table", 1, 20, 20, 1, 16, 16, "q+v", "table", False, False)]
    rows = []
    for name, config in configs:
        label = ec.config_label(name, config)
        rows += _rows(label, lambda: [(case, err, worst) for case, err, worst in
                                      ec.check_attention_config(name, config, cases, dtype, DEVICE)])
    for config in ec.linear_act_configs()[:1 if args.dry_run else None]:
        rows += _rows(ec.config_label("linear_act", config),
                      lambda: [("LeViT-like GEMMs", *r) for r in
                               ec.check_linear_act_config(config, dtype, DEVICE, rows=(20,) if args.dry_run else (77, 300))])
    for n, m in ec.NYSTROM_TILES[:1 if args.dry_run else None]:
        rows += _rows(f"nystrom m={m}", lambda: [(f"n={n}", *ec.check_nystrom(n, m, dtype, DEVICE))])
    for n, m, d in ec.PERFORMER_TILES[:1 if args.dry_run else None]:
        # python_ref's Performer computes in its input dtype, so its check runs in fp32
        rows += _rows(f"performer m={m} d={d}", lambda: [(f"n={n}", *ec.check_performer(n, m, d, torch.float32,
                                                                                          DEVICE))])
    return dict(dtype=str(dtype), rows=rows, failed=sum("fail" in r for r in rows))


def _rows(config, check):
    """Report rows of one config's check: (case, error, worst tensor) each, or one failing row."""
    try:
        rows = [dict(config=config, case=case, error=error, worst=worst) for case, error, worst in check()]
    except AssertionError as error:
        rows = [dict(config=config, case="-", fail=str(error)[:300])]
    for row in rows:
        _log(("FAIL " if "fail" in row else "ok   ") + " ".join(str(v) for v in row.values()))
    return rows


def step_b256(args):
    batch = 2 if args.dry_run else 256
    dtype = _dtype(args)
    cases = [("DeiT-Ti Armour", batch, 197, 197, 3, 64, 0, "q", None, False, False),
             ("LeViT-128S stage 1 table", batch, 196, 196, 4, 16, 32, "v", "table", False, False)]
    if args.dry_run:
        cases = [(label, batch, 20, 20, *rest) for label, _, _, _, *rest in cases]
    rows = []
    for case in cases:
        result = _attempt(ec.check_attention, case, dtype, DEVICE)
        rows.append(dict(case=case[0], batch=batch, **(result if isinstance(result, dict)
                                                       else dict(error=result[0], worst=result[1]))))
        _log(f"{case[0]} batch {batch}: {rows[-1]}")
    return dict(dtype=str(dtype), rows=rows)


# ----------------------------------------------------------------------------- timing

def _timing_cases(dry_run):
    batch = 1 if dry_run else 256
    n = 16 if dry_run else None
    return [("DeiT-Ti Armour", batch, n or 197, 3, 64, 0, "q", False),
            ("DeiT-Ti regular", batch, n or 197, 3, 64, 64, "v", False),
            ("LeViT-128S stage 1", batch, n or 196, 4, 16, 32, "v", True)]


def _inputs(case, dtype):
    _, batch, n, heads, dqk, dv, value, table = case
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(batch, n, heads, dqk, generator=gen).to(DEVICE, dtype).requires_grad_() for _ in range(2))
    v = torch.randn(batch, n, heads, dv, generator=gen).to(DEVICE, dtype).requires_grad_() if dv else None
    bias = index = None
    if table:
        side = int(round(n ** 0.5))
        index = python_ref.levit_bias_index(side).to(DEVICE) if side * side == n else \
            torch.randint(0, n, (n, n), generator=gen).to(DEVICE)
        bias = torch.randn(heads, int(index.max()) + 1, generator=gen).to(DEVICE, dtype).requires_grad_()
    return q, k, v, bias, index


def _fwd_bwd(forward):
    def call():
        out = forward()
        out.backward(torch.ones_like(out))
    return call


def _ours(q, k, v, bias, index, value, deterministic=False):
    def forward():
        saved = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            return armour_kernels.attention(q, k, v, value=value, bias=bias, bias_index=index, backend="triton")
        finally:
            torch.use_deterministic_algorithms(saved)
    return forward


def _sdpa(q, k, v, bias, index, value):
    import torch.nn.functional as F
    value_t = {"q": q, "v": v}[value]

    def forward():
        mask = bias[:, index][None] if bias is not None else None
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), value_t.transpose(1, 2),
                                              attn_mask=mask).transpose(1, 2)
    return forward


def _flex(q, k, v, bias, index, value):
    from torch.nn.attention.flex_attention import flex_attention
    compiled = torch.compile(flex_attention)
    value_t = {"q": q, "v": v}[value]
    score_mod = None
    if bias is not None:
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[h, index[q_idx, kv_idx]]

    def forward():
        return compiled(q.transpose(1, 2), k.transpose(1, 2), value_t.transpose(1, 2),
                        score_mod=score_mod).transpose(1, 2)
    return forward


def _measure(forward, reps):
    return _attempt(gpu_timing.measure, _fwd_bwd(forward), reps)


def step_timing(args):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    dtype = _dtype(args)
    reps = 1 if args.dry_run else 20
    rows = []
    for case in _timing_cases(args.dry_run):
        label, value, has_table = case[0], case[6], case[7]
        q, k, v, bias, index = _inputs(case, dtype)
        rows.append(dict(case=label, impl="armour_kernels", **_measure(_ours(q, k, v, bias, index, value), reps)))
        _log(rows[-1])
        if has_table:  # the table gradient: atomic (above), deterministic, none
            rows.append(dict(case=label, impl="armour_kernels deterministic table grad",
                             **_measure(_ours(q, k, v, bias, index, value, deterministic=True), reps)))
            frozen = bias.detach()
            rows.append(dict(case=label, impl="armour_kernels no table grad",
                             **_measure(_ours(q, k, v, frozen, index, value), reps)))
        if not CUDA:
            rows.append(dict(case=label, impl="sdpa / flex", skipped="CUDA only"))
            continue
        default = _measure(_sdpa(q, k, v, bias, index, value), reps)
        if "kernels" in default:
            default["backend"] = gpu_timing.sdpa_backend(default["kernels"])
        rows.append(dict(case=label, impl="sdpa (default)", **default))
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            with sdpa_kernel(backend):
                rows.append(dict(case=label, impl=f"sdpa {backend.name.lower()}",
                                 **_measure(_sdpa(q, k, v, bias, index, value), reps)))
        rows.append(dict(case=label, impl="flex_attention" + (" (table score_mod)" if has_table else ""),
                         **_measure(_flex(q, k, v, bias, index, value), reps)))
        for row in rows[-5:]:
            _log(row)
    return dict(dtype=str(dtype), reps=reps, rows=rows, chosen_configs=_chosen_configs())


def _chosen_configs():
    """Per autotuned kernel: every key it tuned, the config it chose, and its last tuning's seconds."""
    from armour_kernels.triton.attention import TUNED
    from armour_kernels.triton.linear_act import _linear_act_autotuned
    chosen = {}
    for name, tuned in {**TUNED, "linear_act": _linear_act_autotuned}.items():
        chosen[name] = dict(keys={str(key): str(config) for key, config in tuned.cache.items()},
                            last_tuning_s=round(getattr(tuned, "bench_time", 0.0) or 0.0, 3))
    return chosen


# ----------------------------------------------------------------------------- training, sync

def step_train(args):
    import gpu_training
    batch = 2 if args.dry_run else 256  # 2: LeViT's BatchNorm needs > 1 value
    return dict(rows=gpu_training.run(DEVICE, batch, steps=1 if args.dry_run else 5, dry_run=args.dry_run))


def _launcher_calls(dtype):
    """(name, call) of every launcher family, forward and backward, straight on the Triton launchers."""
    from armour_kernels.triton import attention as ta
    from armour_kernels.triton import linear_act as tla
    from armour_kernels.triton import nystrom as tn
    from armour_kernels.triton import performer as tp
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype)

    q, k, v = rand(4, 196, 4, 16), rand(4, 196, 4, 16), rand(4, 196, 4, 32)
    table, index = rand(4, 196), torch.randint(0, 196, (196, 196), generator=gen).to(DEVICE)
    kw = dict(value="q+v", scale=None, mask_diagonal=False)

    def attention(deterministic):
        def call():
            torch.use_deterministic_algorithms(deterministic)
            try:
                out, lse = ta.attention_forward(q, k, v, table, index, **kw)
                ta.attention_backward(torch.ones_like(out), q, k, v, table, index, out, lse, need_dbias=True, **kw)
            finally:
                torch.use_deterministic_algorithms(False)
        return call

    x = rand(2, 257, 4, 32)
    projection = rand(110, 32).float()

    def nystrom():
        out, saved = tn.nystrom_forward(x, x, x, None, num_landmarks=64, mode="seed")
        tn.nystrom_backward(torch.ones_like(out), x, x, x, None, saved, num_landmarks=64, mode="seed")

    def performer():
        out, ctx, ksum, stab = tp.performer_forward(x, x, x, projection, kernel="softmax", mode="seed", value="v")
        tp.performer_backward(torch.ones_like(out), x, x, x, projection, ctx, ksum, stab, kernel="softmax",
                              mode="seed", value="v")

    def linear_act():
        tla.linear_act_forward(rand(512, 128), rand(256, 128), rand(256), act_out=True, residual=rand(512, 256))

    return [("attention table (atomic)", attention(False)), ("attention table (deterministic)", attention(True)),
            ("nystrom seed", nystrom), ("performer softmax seed", performer), ("linear_act", linear_act)]


def step_sync(args):
    if not CUDA:
        return dict(skipped="CUDA only (tests/triton/test_no_host_sync.py checks the launchers on the CPU)")
    dtype = _dtype(args)
    rows = []
    for name, call in _launcher_calls(dtype):  # warmed first: compiling and autotuning sync
        rows.append(dict(launcher=name, host_sync=_sync_free(call)))
        _log(rows[-1])
    # The same through the public op (autograd, the op layer's argument checks): reported, not
    # counted, since the op layer around the launchers is checked in its own right.
    q, k = (torch.randn(4, 196, 4, 16, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(2))
    table = torch.randn(4, 196, device=DEVICE, dtype=dtype, requires_grad=True)
    index = torch.randint(0, 196, (196, 196), device=DEVICE)

    def op_call():
        armour_kernels.attention(q, k, value="q", bias=table, bias_index=index, backend="triton").sum().backward()

    rows.append(dict(launcher="attention op (informational)", host_sync=_sync_free(op_call)))
    _log(rows[-1])
    return dict(rows=rows, failed=sum(r["host_sync"] != "none" for r in rows if "informational" not in r["launcher"]))


def _sync_free(call):
    call()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
        return "none"
    except RuntimeError as error:
        return str(error)[:300]
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------- report

STEPS = {"env": step_env, "edge": step_edge, "configs": step_configs, "b256": step_b256, "timing": step_timing,
         "train": step_train, "sync": step_sync}


def _table(rows, columns):
    if not rows:
        return ["(none)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            cells.append(f"{value:.3g}" if isinstance(value, float) else str(value if value is not None else "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def step_report(args):
    out = Path(args.out)
    results = {}
    for name in STEPS:
        path = out / f"{name}.json"
        results[name] = json.loads(path.read_text()) if path.exists() else {"missing": "step did not finish"}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    env = results["env"]
    lines = [f"# GPU validation: {env.get('gpu') or 'CPU dry run (Triton interpreter)'}", "",
             "```", json.dumps(env, indent=1, default=str), "```", ""]
    sections = [("edge", "Edge cases vs python_ref (first config of each kernel)", None),
                ("configs", "Every config forced, vs python_ref (worst relative error of out and gradients)",
                 ["config", "case", "error", "worst", "fail"]),
                ("b256", "Batch 256 vs python_ref", ["case", "batch", "error", "worst"]),
                ("timing", "Forward + backward per call (ms): first call, wall (eager), kernel-only",
                 ["case", "impl", "first_call_ms", "wall_ms", "kernel_ms", "backend", "error", "skipped"]),
                ("train", "Training step (bf16 autocast, AdamW)",
                 ["pair", "model", "batch", "step_ms", "images_per_s", "peak_mib", "loss"]),
                ("sync", "Host syncs in warm launcher calls (set_sync_debug_mode error)", ["launcher", "host_sync"])]
    for name, title, columns in sections:
        data = results[name]
        lines += [f"## {title}", ""]
        if "missing" in data or "skipped" in data or "failed_step" in data:
            lines += [str(data.get("missing") or data.get("skipped") or data.get("failed_step")), ""]
            continue
        if columns is None:
            lines += [f"{len(data.get('cases', []))} cases passed ({data.get('dtype')}, {data.get('seconds')} s)", ""]
            continue
        lines += _table(data.get("rows", []), columns) + [""]
        if name == "timing":
            lines += ["Chosen configs per key:", "", "```", json.dumps(data.get("chosen_configs"), indent=1), "```", ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=[*STEPS, "report", "all"])
    parser.add_argument("--out", default="bench/out/gpu-sweep")
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    parser.add_argument("--only", default=None, help="edge: families (attention,nystrom,performer,linear_act)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    args = parser.parse_args(argv)
    if args.dry_run and CUDA:
        parser.error("--dry-run is the CPU check of this script; run without it on a GPU")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    steps = list(STEPS) if args.step == "all" else [args.step]
    status = 0
    for step in steps:
        start = time.time()
        _log(f"== {step}")
        try:
            result = STEPS[step](args) if step in STEPS else step_report(args)
        except Exception:
            result = {"failed_step": traceback.format_exc()[-2000:]}
            status = 1
        if step in STEPS:
            if isinstance(result, dict):
                result["step_seconds"] = round(time.time() - start, 1)
            (Path(args.out) / f"{step}.json").write_text(json.dumps(result, indent=1, default=str))
            if isinstance(result, dict) and (result.get("failed") or "failed_step" in result):
                status = 1
                _log(result.get("failed_step", f"{result.get('failed')} failed"))
    if args.step == "all":
        step_report(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
