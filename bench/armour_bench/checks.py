"""Quick correctness checks of every fused kernel present on a device against python_ref.

Small inputs, compared with python_ref in float64 on the same values (forward, and the input
gradients for the attention family). Used by the `armour-bench` main job before it times
anything, so a machine with a broken build says so first. The test suite is the thorough
check; this is a smoke test that runs in seconds anywhere.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from armour_kernels.backend import cpu_has_op, interpreting as triton_interpreting
from armour_kernels.tolerances import allowed_error, relative_error



@dataclass
class Check:
    kernel: str
    case: str
    backend: str
    error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance  # False for NaN

    def as_dict(self):
        return dict(asdict(self), passed=self.passed)

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"  [{verdict}] {self.kernel:<20} {self.case:<30} {self.backend:<7} max err {self.error:.2e} (tol {self.tolerance:.0e})"


def kernel_backends(device: torch.device, op: str) -> list[str]:
    """The fused backends that can run `op` on `device` here."""
    if device.type == "cuda":
        return ["triton"]
    backends = ["cpu"] if cpu_has_op(op) else []
    if triton_interpreting():
        backends.append("triton")
    return backends


def _error(actual, expected) -> float:
    return relative_error(actual, expected)


def _grads(fn, inputs, weight):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad((out.double() * weight).sum(), [t for t in leaves if t is not None])
    return out.detach(), grads


def _attention_cases(device, dtype, gen):
    from python_ref.attention import levit_bias_index
    b, n, h, d = 2, 17, 2, 16
    rand = lambda *shape: torch.randn(*shape, device=device, dtype=dtype, generator=gen)  # noqa: E731
    index = levit_bias_index(4).to(device)  # 16 tokens of a 4×4 grid
    yield "regular (v)", dict(value="v"), (rand(b, n, h, d), rand(b, n, h, d), rand(b, n, h, d)), None
    yield "armour (q)", dict(value="q"), (rand(b, n, h, d), rand(b, n, h, d), None), None
    yield "shared_qk_nodiag", dict(value="v", mask_diagonal=True), (rand(b, n, h, d), None, rand(b, n, h, d)), None
    yield "levit armour (q+v, bias)", dict(value="q+v"), (rand(b, 16, h, d), rand(b, 16, h, d), rand(b, 16, h, d)), \
        (rand(h, 16), index)
    yield "levit armour+ (q+k, bias)", dict(value="q+k"), (rand(b, 16, h, d), rand(b, 16, h, d), None), \
        (rand(h, 16), index)


def check_attention(device, dtype, backend, gen) -> list[Check]:
    from armour_kernels.ops.attention import attention
    results = []
    for case, options, (q, k, v), bias in _attention_cases(device, dtype, gen):
        table, index = bias if bias is not None else (None, None)
        shared_key = k is None  # shared_qk: the key is the query

        def run(q, k, v, table, *, backend, options=options, index=index, shared_key=shared_key):
            return attention(q, q if shared_key else k, v, bias=table, bias_index=index, backend=backend, **options)

        inputs = [q, k, v, table]
        weight = torch.randn(q.shape[0], q.shape[1], q.shape[2], _width(q, v, options["value"]),
                             device=device, dtype=torch.float64, generator=gen)
        out, grads = _grads(lambda *t: run(*t, backend=backend), inputs, weight)
        ref_inputs = [t.double() if t is not None else None for t in inputs]
        ref_out, ref_grads = _grads(lambda *t: run(*t, backend="reference"), ref_inputs, weight)
        error = max([_error(out, ref_out)] + [_error(g, r) for g, r in zip(grads, ref_grads)])
        results.append(Check("attention", case + " fwd+bwd", backend, error, allowed_error(dtype)))
    return results


def _width(q, v, value):
    return sum({"q": q.shape[-1], "k": q.shape[-1], "v": v.shape[-1] if v is not None else 0}[p]
               for p in value.split("+"))


def check_nystrom(device, dtype, backend, gen) -> list[Check]:
    from armour_kernels.ops.nystrom import nystrom_attention
    q, k, v = (torch.randn(2, 50, 2, 16, device=device, dtype=dtype, generator=gen) for _ in range(3))
    conv = torch.randn(2, 1, 33, 1, device=device, dtype=dtype, generator=gen) * 0.1
    results = []
    for value in ("v", "q"):
        kwargs = dict(num_landmarks=8, value=value, conv_weight=conv)
        vv = v if value == "v" else None
        out = nystrom_attention(q, k, vv, backend=backend, **kwargs)
        ref = nystrom_attention(q.double(), k.double(), None if vv is None else vv.double(), backend="reference",
                                **dict(kwargs, conv_weight=conv.double()))
        results.append(Check("nystrom_attention", f"value={value} fwd", backend, _error(out, ref),
                             allowed_error(dtype, 5)))  # six pinv iterations amplify rounding
    return results


def check_performer(device, dtype, backend, gen) -> list[Check]:
    from python_ref.performer import default_num_features, gaussian_orthogonal_random_matrix

    from armour_kernels.ops.performer import performer_attention
    d = 16
    q, k, v = (torch.randn(2, 50, 2, d, device=device, dtype=dtype, generator=gen) for _ in range(3))
    projection = gaussian_orthogonal_random_matrix(default_num_features(d), d,
                                                   generator=torch.Generator().manual_seed(0))
    results = []
    for kernel in ("softmax", "relu"):
        p = projection.to(device=device, dtype=dtype)
        out = performer_attention(q, k, v, projection=p, kernel=kernel, backend=backend)
        ref = performer_attention(q.double(), k.double(), v.double(), projection=p.double(), kernel=kernel,
                                  backend="reference")
        results.append(Check("performer_attention", f"{kernel} fwd", backend, _error(out, ref), allowed_error(dtype)))
    return results


def check_linear_hardswish(device, dtype, backend, gen) -> list[Check]:
    import torch.nn.functional as F

    from armour_kernels.ops.linear_act import linear_hardswish
    x = torch.randn(2, 49, 96, device=device, dtype=dtype, generator=gen)
    weight = torch.randn(80, 96, device=device, dtype=dtype, generator=gen) * 96 ** -0.5
    bias = torch.randn(80, device=device, dtype=dtype, generator=gen)
    out = linear_hardswish(x, weight, bias, backend=backend)
    ref = F.hardswish(F.linear(x.double(), weight.double(), bias.double()))
    return [Check("linear_hardswish", "LeViT MLP fwd", backend, _error(out, ref), allowed_error(dtype))]


KERNEL_CHECKS = {"attention": check_attention, "nystrom_attention": check_nystrom,
                 "performer_attention": check_performer, "linear_hardswish": check_linear_hardswish}


def run_checks(device: torch.device, dtype: torch.dtype, seed: int = 0):
    """(checks, missing): the Check results, and the kernels with no fused backend on this device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    results, missing = [], []
    for op, check in KERNEL_CHECKS.items():
        backends = kernel_backends(device, op)
        if not backends:
            missing.append(op)
        for backend in backends:
            try:
                results.extend(check(device, dtype, backend, gen))
            except Exception as error:  # a crash is a failure to report, not a reason to stop the job
                results.append(Check(op, f"crashed: {type(error).__name__}: {str(error)[:60]}", backend,
                                     float("nan"), allowed_error(dtype)))
    return results, missing
