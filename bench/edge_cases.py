"""Small edge-case problems through every Triton launcher, each checked against python_ref in float64.

What compute-sanitizer runs (bench/gpu_sweep.py edge): each case runs the op (backend "triton")
forward and backward once, on small shapes chosen to reach the masked edges: N not a multiple of
any tile, partly and fully masked rows, broadcast dense biases and the LeViT table, every value
source, the deterministic reductions, Nyström with and without padding (and the PyTorch pinv
above 64 landmarks), both Performer kernels and modes, Linear + Hardswish with a residual. Every
result is compared with python_ref in float64, so a sanitizer run also catches wrong numbers.
Autotuning keeps each kernel's first config only (`first_config_only`): a sanitizer slows every
launch 10-100×, and this is a memory check, not a timing.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from triton.runtime.autotuner import Autotuner  # noqa: E402

import armour_kernels  # noqa: E402
import python_ref  # noqa: E402

from armour_kernels.tolerances import allowed_error, relative_error  # noqa: E402
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NEG = float("-inf")


def first_config_only():
    """Every autotuned launch benchmarks (and so compiles and runs) only its first config."""
    original = Autotuner.prune_configs
    Autotuner.prune_configs = lambda self, kwargs: original(self, kwargs)[:1]


def _compare(name, got, want, dtype):
    err, allowed = relative_error(got, want), allowed_error(dtype)
    if not err <= allowed:  # NaN (a non-finite result where the reference is finite) fails too
        raise AssertionError(f"{name}: relative error {err:.3g} (allowed {allowed:.3g})")


def _check(name, run_ours, run_ref, leaves, dtype):
    """Forward and backward of `run_ours` on `leaves` against `run_ref` on float64 copies."""
    ours = [t.detach().to(DEVICE, dtype).requires_grad_() for t in leaves]
    refs = [t.detach().double().requires_grad_() for t in leaves]
    out = run_ours(*ours)
    expected = run_ref(*refs)
    _compare(f"{name} out", out.cpu(), expected, dtype)
    dout = torch.randn(expected.shape, dtype=torch.float64)
    got = torch.autograd.grad(out, ours, dout.to(DEVICE, dtype))
    want = torch.autograd.grad(expected, refs, dout)
    for i, (g, w) in enumerate(zip(got, want)):
        _compare(f"{name} grad {i}", g.cpu(), w, dtype)


# ----------------------------------------------------------------------------- attention

def _masked_reference(q, k, v, value, bias):
    """python_ref with fully masked rows as docs/numerics.md defines them (output 0, no gradient)."""
    def heads_first(t):
        return t.transpose(1, 2) if t is not None else None

    if bias is None:
        return python_ref.attention(heads_first(q), heads_first(k), heads_first(v), value=value).transpose(1, 2)
    b4 = bias[(None,) * (4 - bias.dim())]
    empty = torch.isneginf(b4).all(-1, keepdim=True)
    out = python_ref.attention(heads_first(q), heads_first(k), heads_first(v), value=value,
                               bias=torch.where(empty, torch.zeros_like(b4), b4))
    empty = empty.expand(q.shape[0], q.shape[2], q.shape[1], 1)
    return torch.where(empty, torch.zeros_like(out), out).transpose(1, 2)


def attention_cases(dtype):
    gen = torch.Generator().manual_seed(0)
    for value, n, d, bias_kind, deterministic in [
            ("v", 37, 16, None, False), ("q", 197, 64, None, False), ("q+v", 49, 16, "table", False),
            ("q+k", 49, 32, "table", True), ("v", 37, 64, "dense", False), ("v", 37, 64, "dense", True),
            ("q", 37, 32, "masked", False), ("v", 260, 128, None, False)]:
        batch, heads = 3, 2
        q, k, v = (torch.randn(batch, n, heads, d, generator=gen) for _ in range(3))
        leaves = [q, k] + ([v] if "v" in value else [])
        index = None
        if bias_kind == "table":
            leaves.append(torch.randn(heads, 13, generator=gen))
            index = torch.randint(0, 13, (n, n), generator=gen)
        elif bias_kind in ("dense", "masked"):
            bias = torch.randn(heads, n, n, generator=gen)
            if bias_kind == "masked":
                bias[0, 3] = NEG
                bias[:, 5, :7] = NEG
            leaves.append(bias)

        def ours(*ts, value=value, index=index, bias_kind=bias_kind):
            q, k, *rest = ts
            v = rest.pop(0) if "v" in value else None
            bias = rest[0] if rest else None
            return armour_kernels.attention(q, k, v, value=value, bias=bias,
                                            bias_index=index.to(DEVICE) if index is not None else None,
                                            backend="triton")

        def ref(*ts, value=value, index=index):
            q, k, *rest = ts
            v = rest.pop(0) if "v" in value else None
            bias = rest[0] if rest else None
            if index is not None:
                bias = python_ref.levit_bias(bias, index)
            return _masked_reference(q, k, v, value, bias)

        name = f"attention value={value} N={n} d={d} bias={bias_kind} deterministic={deterministic}"
        yield name, ours, ref, leaves, deterministic


# ----------------------------------------------------------------------------- linear attention

def nystrom_cases(dtype):
    gen = torch.Generator().manual_seed(1)
    for n, m, mode, value, conv in [(77, 8, "clean", "v", True), (64, 8, "seed", "q", False),
                                    (129, 96, "clean", "v", True)]:
        q, k, v = (torch.randn(2, n, 2, 16, generator=gen) for _ in range(3))
        leaves = [q, k] + ([v] if value == "v" else []) + ([torch.randn(2, 1, 33, 1, generator=gen) * 0.2]
                                                            if conv else [])

        def split(ts, value=value, conv=conv):
            q, k, *rest = ts
            v = rest.pop(0) if value == "v" else None
            return q, k, v, (rest[0] if conv else None)

        def ours(*ts, m=m, mode=mode, value=value, split=split):
            q, k, v, w = split(ts)
            return armour_kernels.nystrom_attention(q, k, v, num_landmarks=m, mode=mode, value=value,
                                                    conv_weight=w, backend="triton")

        def ref(*ts, m=m, mode=mode, value=value, split=split):
            q, k, v, w = split(ts)
            return python_ref.nystrom_attention(*(t.transpose(1, 2) if t is not None else None for t in (q, k, v)),
                                                num_landmarks=m, mode=mode, value=value, conv_weight=w).transpose(1, 2)

        yield f"nystrom n={n} m={m} {mode} value={value} conv={conv}", ours, ref, leaves, False


def performer_cases(dtype):
    gen = torch.Generator().manual_seed(2)
    for kernel, mode, value in [("softmax", "clean", "v"), ("softmax", "seed", "q"), ("relu", "clean", "v")]:
        q, k, v = (torch.randn(2, 70, 2, 32, generator=gen) for _ in range(3))
        torch.manual_seed(3)
        projection = python_ref.gaussian_orthogonal_random_matrix(110, 32)
        leaves = [q, k] + ([v] if value == "v" else [])

        def ours(*ts, kernel=kernel, mode=mode, value=value, projection=projection):
            q, k, *rest = ts
            return armour_kernels.performer_attention(q, k, rest[0] if rest else None,
                                                      projection=projection.to(DEVICE), kernel=kernel, mode=mode,
                                                      value=value, backend="triton")

        def ref(*ts, kernel=kernel, mode=mode, value=value, projection=projection):
            q, k, *rest = (t.transpose(1, 2) for t in ts)
            return python_ref.performer_attention(q, k, rest[0] if rest else None, projection=projection.double(),
                                                  kernel=kernel, mode=mode, value=value).transpose(1, 2)

        yield f"performer {kernel} {mode} value={value}", ours, ref, leaves, False


def linear_act_cases(dtype):
    """(name, (x, weight, bias, residual or None, act_in)): the LeViT MLP and attention-proj GEMMs."""
    gen = torch.Generator().manual_seed(4)
    for rows, cin, cout, act_in, residual in [(197, 128, 256, False, False), (49, 256, 384, True, True)]:
        x, w = torch.randn(rows, cin, generator=gen), torch.randn(cout, cin, generator=gen) * 0.1
        b, r = torch.randn(cout, generator=gen), torch.randn(rows, cout, generator=gen)
        yield (f"linear_act {rows}x{cin}->{cout} act_in={act_in} residual={residual}",
               (x, w, b, r if residual else None, act_in))


# ----------------------------------------------------------------------------- running them

def run_linear_act(dtype, first_only=False):
    import torch.nn.functional as F
    from armour_kernels.triton.linear_act import linear_act_forward
    done = []
    for name, (x, w, b, r, act_in) in linear_act_cases(dtype):
        xs, ws, bs = (t.to(DEVICE, dtype) for t in (x, w, b))
        rs = r.to(DEVICE, dtype) if r is not None else None
        got = linear_act_forward(xs, ws, bs, act_in=act_in, act_out=not act_in, residual=rs)
        x64, w64, b64 = (t.to(dtype).double() for t in (x, w, b))
        want = F.linear(F.hardswish(x64) if act_in else x64, w64, b64)
        want = want if act_in else F.hardswish(want)
        if r is not None:
            want = want + r.to(dtype).double()
        _compare(name, got.cpu(), want, dtype)
        print(f"ok  {name}", flush=True)
        done.append(name)
        if first_only:
            break
    return done


FAMILIES = {"attention": attention_cases, "nystrom": nystrom_cases, "performer": performer_cases}


def run(families, dtype, log=print, first_only=False):
    """Every case of `families` (attention, nystrom, performer, linear_act), or the first of each:
    [case names]."""
    done = []
    for family in families:
        if family == "linear_act":
            done += run_linear_act(dtype, first_only)
            continue
        for i, (name, ours, ref, leaves, deterministic) in enumerate(FAMILIES[family](dtype)):
            if first_only and i:
                break
            torch.use_deterministic_algorithms(deterministic)
            try:
                _check(name, ours, ref, leaves, dtype)
            finally:
                torch.use_deterministic_algorithms(False)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            log(f"ok  {name}")
            done.append(name)
    return done
