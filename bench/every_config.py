"""Every config of every Triton kernel, each forced (not picked by the autotuner), against python_ref.

On a GPU the autotuner benchmarks every config it keeps, and whichever wins runs; a config that is
wrong only at some masked edge would show only where it wins. So each config of the attention
kernels (fwd, dK/dV, dQ: `triton.attention.forced_configs`) and of linear_act
(`triton.linear_act.forced_config`) is forced in turn, the other kernels left as they are, and
the op's forward and backward compared with python_ref in float64; Nyström and Performer pick
their tiles from the shape, so their cases span every tile choice. The same checks run in the
interpreter (tests/triton/test_every_config.py, small shapes) and on a GPU
(bench/gpu_sweep.py configs, at the DeiT / LeViT shapes).
"""
from __future__ import annotations

import torch

import armour_kernels
import python_ref
from armour_kernels.tolerances import allowed_error, relative_error

# label, batch, nq, nk, heads, d_qk, d_v, value, bias ("table" / "dense" / "broadcast" / None),
# mask_diagonal, deterministic. The small ones put row and key counts off every tile size.
SMALL_ATTENTION = [
    ("q+v table", 2, 45, 45, 1, 16, 32, "q+v", "table", False, False),
    ("k broadcast-bias deterministic nodiag", 3, 37, 37, 2, 16, 0, "k", "broadcast", True, True),
    ("v table deterministic Nq!=Nk", 1, 21, 70, 2, 16, 24, "v", "table", False, True),
]
# On a GPU: each forced config compiles once per case (≈ 1 s each), so two cases, the two families.
GPU_ATTENTION = [
    ("DeiT-Ti Armour", 8, 197, 197, 3, 64, 0, "q", None, False, False),
    ("LeViT-128S stage 1 armour table", 8, 196, 196, 4, 16, 32, "q+v", "table", False, False),
]


def _leaves(case, gen):
    _, batch, nq, nk, heads, dqk, dv, value, bias, *_ = case
    q = torch.randn(batch, nq, heads, dqk, generator=gen)
    k = torch.randn(batch, nk, heads, dqk, generator=gen)
    v = torch.randn(batch, nk, heads, dv, generator=gen) if dv else None
    table = index = None
    if bias == "table":
        table, index = torch.randn(heads, 23, generator=gen), torch.randint(0, 23, (nq, nk), generator=gen)
    elif bias == "dense":
        table = torch.randn(batch, heads, nq, nk, generator=gen)
    elif bias == "broadcast":
        table = torch.randn(heads, 1, nk, generator=gen)
        table[0, 0, :3] = float("-inf")
    return q, k, v, table, index


def _grads(out, leaves, dout):
    live = [t for t in leaves if t is not None]
    return torch.autograd.grad(out, live, dout)


def check_attention(case, dtype, device, seed=0):
    """The op (backend triton) vs python_ref (float64): worst relative error over out and every
    gradient, and the name of the worst; raises AssertionError past the dtype's tolerance."""
    label, *_, value, _, mask_diagonal, deterministic = case
    q, k, v, table, index = _leaves(case, torch.Generator().manual_seed(seed))
    ours = [t.to(device, dtype).requires_grad_() if t is not None else None for t in (q, k, v, table)]
    refs = [t.double().requires_grad_() if t is not None else None for t in (q, k, v, table)]
    idx = index.to(device) if index is not None else None
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        out = armour_kernels.attention(ours[0], ours[1], ours[2], value=value, bias=ours[3], bias_index=idx,
                                       mask_diagonal=mask_diagonal, backend="triton")
        bias = python_ref.levit_bias(refs[3], index) if index is not None else refs[3]
        if bias is not None and bias.dim() == 3:
            bias = bias[None]
        want = _masked_reference(refs[0], refs[1], refs[2], value, bias, mask_diagonal)
        dout = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
        got = [out] + list(_grads(out, ours, dout.to(device, dtype)))
        expected = [want] + list(_grads(want, refs, dout))
    finally:
        torch.use_deterministic_algorithms(saved)
    names = ["out", "dq", "dk"] + (["dv"] if v is not None else []) + (["dbias"] if table is not None else [])
    return _worst(label, names, got, expected, dtype)


def _masked_reference(q, k, v, value, bias, mask_diagonal):
    """python_ref with a fully masked row as the op defines it (output 0, no gradient)."""
    def heads_first(t):
        return t.transpose(1, 2) if t is not None else None

    if bias is not None:
        empty = torch.isneginf(bias).all(-1, keepdim=True)
        bias = torch.where(empty, torch.zeros_like(bias), bias)
    out = python_ref.attention(heads_first(q), heads_first(k), heads_first(v), value=value, bias=bias,
                               mask_diagonal=mask_diagonal)
    if bias is not None:
        out = torch.where(empty.expand(*out.shape[:3], 1), torch.zeros_like(out), out)
    return out.transpose(1, 2)


def _worst(label, names, got, expected, dtype, scale=1.0):
    """(worst relative error, its tensor's name); AssertionError past the dtype's tolerance · scale."""
    allowed = allowed_error(dtype, scale)
    errors = {name: relative_error(g.cpu(), w) for name, g, w in zip(names, got, expected)}
    name = max(errors, key=lambda n: (errors[n] != errors[n], errors[n]))  # NaN first
    if not errors[name] <= allowed:
        raise AssertionError(f"{label}: {name} relative error {errors[name]:.3g} (allowed {allowed:.3g})")
    return errors[name], name


def attention_configs():
    """(kernel name, config) for every config of the three attention kernels."""
    from armour_kernels.triton.attention import TUNED
    return [(name, config) for name, tuned in TUNED.items() for config in tuned.configs]


def config_label(name, config):
    kw = config.kwargs
    return f"{name} M={kw['BLOCK_M']} N={kw['BLOCK_N']}" + (f" K={kw['BLOCK_K']}" if "BLOCK_K" in kw else "") + \
        f" w{config.num_warps}s{config.num_stages}"


def check_attention_config(name, config, cases, dtype, device):
    """Every case with `config` forced on kernel `name`: [(case label, error, worst tensor)]."""
    from armour_kernels.triton.attention import forced_configs
    with forced_configs(**{name: config}):
        return [(case[0], *check_attention(case, dtype, device)) for case in cases]


# ----------------------------------------------------------------------------- linear_act

def linear_act_configs():
    from armour_kernels.triton.linear_act import _linear_act_autotuned
    return list(_linear_act_autotuned.configs)


def check_linear_act_config(config, dtype, device, rows=(77, 300), cin=96, cout=136):
    import torch.nn.functional as F
    from armour_kernels.triton.linear_act import forced_config, linear_act_forward
    gen = torch.Generator().manual_seed(4)
    results = []
    with forced_config(config):
        for m in rows:
            x, w = torch.randn(m, cin, generator=gen), torch.randn(cout, cin, generator=gen) * 0.1
            b, r = torch.randn(cout, generator=gen), torch.randn(m, cout, generator=gen)
            for act_in in (False, True):
                y = linear_act_forward(*(t.to(device, dtype) for t in (x, w, b)), act_in=act_in, act_out=not act_in,
                                       residual=r.to(device, dtype))
                x64, w64, b64, r64 = (t.to(dtype).double() for t in (x, w, b, r))
                want = F.linear(F.hardswish(x64) if act_in else x64, w64, b64)
                want = (want if act_in else F.hardswish(want)) + r64
                results.append(_worst(f"linear_act {m}x{cin}->{cout} act_in={act_in}", ["y"], [y], [want], dtype))
    return results


# ----------------------------------------------------------------------------- Nyström, Performer

# (n, landmarks): BLOCK_N 64 / 32 / 16 (m ≤ 64 / ≤ 128 / more: the last runs the pinv in PyTorch)
NYSTROM_TILES = [(77, 8), (70, 96), (40, 136)]
# (n, features, d): one 32-feature chunk on 4 warps; two 64-feature chunks on 8 warps
PERFORMER_TILES = [(45, 24, 16), (70, 110, 32)]


def check_nystrom(n, m, dtype, device, mode="clean", value="v"):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, n, 2, 16, generator=gen) for _ in range(3))
    conv = torch.randn(2, 1, 33, 1, generator=gen) * 0.2
    leaves = [q, k] + ([v] if value == "v" else []) + [conv]
    ours = [t.to(device, dtype).requires_grad_() for t in leaves]
    refs = [t.double().requires_grad_() for t in leaves]

    def split(ts):
        return ts[0], ts[1], (ts[2] if value == "v" else None), ts[-1]

    q1, k1, v1, w1 = split(ours)
    out = armour_kernels.nystrom_attention(q1, k1, v1, num_landmarks=m, mode=mode, value=value,
                                           conv_weight=w1.to(torch.float32), backend="triton")
    q2, k2, v2, w2 = split(refs)
    want = python_ref.nystrom_attention(*(t.transpose(1, 2) if t is not None else None for t in (q2, k2, v2)),
                                        num_landmarks=m, mode=mode, value=value, conv_weight=w2).transpose(1, 2)
    dout = torch.randn(want.shape, dtype=torch.float64, generator=gen)
    got = [out] + list(_grads(out, ours, dout.to(device, dtype)))
    expected = [want] + list(_grads(want, refs, dout))
    names = ["out"] + [f"grad {i}" for i in range(len(leaves))]
    # the six pinv iterations amplify rounding (docs/numerics.md): the op tests' factor
    return _worst(f"nystrom n={n} m={m} {mode}", names, got, expected, dtype, 5.0)


def check_performer(n, m, d, dtype, device, kernel="softmax", mode="clean"):
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, n, 2, d, generator=gen) for _ in range(3))
    torch.manual_seed(7)
    projection = python_ref.gaussian_orthogonal_random_matrix(m, d)
    ours = [t.to(device, dtype).requires_grad_() for t in (q, k, v)]
    refs = [t.double().requires_grad_() for t in (q, k, v)]
    out = armour_kernels.performer_attention(*ours, projection=projection.to(device), kernel=kernel, mode=mode,
                                             backend="triton")
    want = python_ref.performer_attention(*(t.transpose(1, 2) for t in refs), projection=projection.double(),
                                          kernel=kernel, mode=mode).transpose(1, 2)
    dout = torch.randn(want.shape, dtype=torch.float64, generator=gen)
    got = [out] + list(_grads(out, ours, dout.to(device, dtype)))
    expected = [want] + list(_grads(want, refs, dout))
    return _worst(f"performer n={n} m={m} d={d} {kernel} {mode}", ["out", "dq", "dk", "dv"], got, expected,
                         dtype, 1.0)
