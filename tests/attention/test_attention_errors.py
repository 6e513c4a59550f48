"""Bad arguments to the attention op raise clear errors (the type, the shape, the argument named),
whichever backend would run; the LeViT index is checked against the table also after an in-place
change. The C++ launchers' own checks are in test_attention_cpu.py."""
import pytest
import torch

from armour_kernels import attention, use_backend
from helpers import backend_params


def _bad_inputs():
    q = torch.randn(1, 5, 2, 16)
    k = torch.randn(1, 5, 2, 16)
    v = torch.randn(1, 5, 2, 16)
    table = torch.randn(2, 9)
    index = torch.zeros(5, 5, dtype=torch.int64)
    return [
        (lambda: attention(q, k[..., :8], v), ValueError, "agree in B, H and D"),
        (lambda: attention(q, k.double(), v), TypeError, "q is torch.float32"),
        (lambda: attention(q.long(), k.long(), v.long()), TypeError, "floating-point"),
        (lambda: attention(q[0], k[0], v[0]), ValueError, r"\(B, N, H, D\)"),
        (lambda: attention(torch.randn(1, 5, 2, 300), torch.randn(1, 5, 2, 300), value="q"), ValueError, "256"),
        (lambda: attention(q, k, v, bias=torch.randn(3, 5, 5)), ValueError, "does not broadcast"),
        (lambda: attention(q, k, v, bias_index=index), ValueError, "needs the bias table"),
        (lambda: attention(q, k, v, bias=table, bias_index=index.float()), TypeError, "int64"),
        (lambda: attention(q, k, v, bias=table, bias_index=index[:4]), ValueError, r"\(Nq, Nk\)"),
        (lambda: attention(q, k, v, bias=torch.randn(3, 9), bias_index=index), ValueError, r"\(H, R\) table"),
        (lambda: attention(q, k, v, bias=table, bias_index=index + 9), ValueError, "outside the table"),
        (lambda: attention(q, k), ValueError, "needs v"),
        (lambda: attention(q, k, v, value="q"), ValueError, "does not use it"),
        (lambda: attention(q[:, :3], k, value="q"), ValueError, "as many queries as keys"),
        (lambda: attention(q, k, v, value="w"), ValueError, "value must be one of"),
        (lambda: attention(q, k, v, backend="cuda"), ValueError, "backend must be one of"),
        (lambda: attention(q, k, v[:, :4]), ValueError, "must match k"),
        (lambda: attention(q.double(), k.double(), v.double(), backend="triton"), TypeError, "reference"),
    ]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_inputs_raise_clear_errors(case, backend):
    """The op checks its arguments before it picks a kernel: the same error whichever backend
    would run (use_backend; a case with its own backend= argument keeps it)."""
    fn, error, message = _bad_inputs()[case]
    with use_backend(backend), pytest.raises(error, match=message):
        fn()


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
def test_scale_must_be_finite(scale, backend):
    q = torch.randn(1, 4, 1, 8)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        attention(q, q, q, scale=scale, backend=backend)


@pytest.mark.parametrize("backend", backend_params())
def test_table_index_out_of_range_is_refused_also_after_an_in_place_change(backend):
    table, q = torch.randn(2, 10), torch.randn(1, 4, 2, 8)
    index = torch.randint(0, 10, (4, 4))
    attention(q, q, q, bias=table, bias_index=index, backend=backend)  # checked, cached
    index[1, 2] = 10  # in place: the version counter moves, the check runs again
    with pytest.raises(ValueError, match="outside the table"):
        attention(q, q, q, bias=table, bias_index=index, backend=backend)
    index[1, 2] = -1
    with pytest.raises(ValueError, match="outside the table"):
        attention(q, q, q, bias=table, bias_index=index, backend=backend)
