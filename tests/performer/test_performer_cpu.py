"""The Performer C++ kernels (armour_kernels._C) through the op with backend="cpu", against
python_ref's autograd in float64: a sweep of shapes (several blocks of tokens, Nq ≠ Nk, the paper's
feature count), every ISA path, one sequence split over threads, backend="auto" on CPU tensors,
and the extension's own input checks. What every backend shares (half precision, strides, large
scores, torch.compile, the op's argument checks) is test_performer_op.py."""
import pytest
import torch

import armour_kernels
from armour_kernels import cpu
from armour_kernels.backend import select
from helpers import assert_close
from linear_attention_checks import (check_dispatcher_op, check_gradients, packed_qkv, performer_pair,
                                     random_projection)

OP = "performer_attention"
pytestmark = pytest.mark.skipif(not cpu.has_op(OP), reason="armour_kernels._C not built with the Performer kernels")


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("mode", ["clean", "seed"])
@pytest.mark.parametrize("batch, value, n, nk, m", [
    (2, "v", 37, 29, 24), (1, "q", 50, 50, 20), (2, "v", 1, 3, 7),
    (1, "v", 300, 270, 110),  # several blocks of tokens per (b, h), short last blocks, the paper's m
])
def test_fused_backward_matches_reference(kernel, mode, batch, value, n, nk, m):
    """Forward and gradients (seed: the batch-wide key stabiliser is attached to autograd)."""
    q, k, v = packed_qkv("cpu", batch, n, 3, 16, torch.float32, value, nk=nk)
    op, ref = performer_pair("cpu", random_projection("cpu", 16, m), kernel, mode, value)
    check_gradients(op, ref, (q, k, v), torch.float32)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("kernel, mode, value", [("softmax", "clean", "q"), ("softmax", "seed", "v"),
                                                 ("relu", "clean", "v")])
def test_every_isa_path(isa, kernel, mode, value):
    """Forward and the fused backward on each ISA path (seed: the attached global stabiliser)."""
    if isa not in cpu.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    q, k, v = packed_qkv("cpu", 2, 41, 2, 32, torch.float32, value)
    op, ref = performer_pair("cpu", random_projection("cpu", 32, 40), kernel, mode, value)
    with cpu.use_isa(isa):
        check_gradients(op, ref, (q, k, v), torch.float32)


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("mode", ["clean", "seed"])
def test_one_sequence_split_over_threads(many_threads, kernel, mode):
    """B = H = 1 and more threads than (b, h) pairs: the token splits' partials (the key
    stabiliser's online maximum, the feature sums, the gradient sums) merge into the one-task result."""
    q, k, v = packed_qkv("cpu", 1, 700, 1, 16, torch.float32, "v", nk=650)
    op, ref = performer_pair("cpu", random_projection("cpu", 16, 40), kernel, mode, "v")
    check_gradients(op, ref, (q, k, v), torch.float32)


def test_auto_backend_picks_the_cpu_kernels():
    assert select(OP, torch.device("cpu"), "auto") == "cpu"
    q, k, v = packed_qkv("cpu", 1, 20, 2, 16, torch.float32, "v")
    projection = random_projection("cpu", 16, 20)
    out = armour_kernels.performer_attention(q, k, v, projection=projection)
    expected = armour_kernels.performer_attention(q, k, v, projection=projection, backend="reference")
    assert_close(out, expected, torch.float32)


def test_extension_checks_its_inputs():
    """The C++ kernels' own checks, which direct callers of the dispatcher op reach (the public op's
    are test_performer_op.py's)."""
    q, k, v = packed_qkv("cpu", 1, 20, 2, 16, torch.float64, "v")
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        torch.ops.armour_kernels.performer_fwd(q, k, v, random_projection("cpu", 16, 20), "softmax", "clean")
    with pytest.raises(RuntimeError, match="kernel must be"):
        torch.ops.armour_kernels.performer_fwd(q.float(), k.float(), v.float(), random_projection("cpu", 16, 20),
                                               "gelu", "clean")


@pytest.mark.parametrize("value", ["v", "q"])
def test_dispatcher_op_runs_without_python(value):
    """The op behind backend="cpu": C++ kernels and autograd (seed mode's attached stabiliser), no
    backend argument, no double backward."""
    q, k, v = (t.requires_grad_() if t is not None else None
               for t in packed_qkv("cpu", 1, 20, 2, 16, torch.float32, value))
    check_dispatcher_op("performer", (q, k, v, random_projection("cpu", 16, 20), "softmax", "seed"))
