"""The Nyström C++ kernels (armour_kernels._C) through the op with backend="cpu", against
python_ref's autograd in float64: a sweep of shapes (several blocks of tokens, short last blocks,
padding), every ISA path, one sequence split over threads, backend="auto" on CPU tensors, and the
extension's own input checks. What every backend shares (half precision, strides, large scores,
torch.compile, the op's argument checks) is test_nystrom_op.py."""
import pytest
import torch

import armour_kernels
from armour_kernels import cpu
from armour_kernels.backend import select
from helpers import assert_close
from linear_attention_checks import check_dispatcher_op, check_gradients, nystrom_pair, packed_qkv, random_conv

OP = "nystrom_attention"
pytestmark = pytest.mark.skipif(not cpu.has_op(OP), reason="armour_kernels._C not built with the Nyström kernels")


@pytest.mark.parametrize("mode", ["clean", "seed"])
@pytest.mark.parametrize("value", ["v", "q"])
@pytest.mark.parametrize("batch, n, m, taps", [
    (1, 77, 8, 33),    # B = 1, n odd and not divisible by m: 3 zero rows padded in front
    (2, 64, 8, 33),    # divisible
    (2, 5, 8, 0),      # n < m: most landmarks are padding only; no residual conv
    (3, 19, 4, 5),
    (2, 300, 16, 9),   # several blocks of tokens per (b, h), a short last block, 4 padded rows
])
def test_fused_backward_matches_reference(mode, value, batch, n, m, taps):
    """Forward and every gradient (q, k, v, conv weight): both pinv scalings, both value sources,
    with and without the conv."""
    q, k, v = packed_qkv("cpu", batch, n, 3, 16, torch.float32, value)
    op, ref = nystrom_pair("cpu", m, mode, value)
    check_gradients(op, ref, (q, k, v, random_conv("cpu", 3, taps)), torch.float32)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("mode, value", [("seed", "v"), ("clean", "q")])
def test_every_isa_path(isa, mode, value):
    if isa not in cpu.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    q, k, v = packed_qkv("cpu", 2, 45, 2, 32, torch.float32, value)
    op, ref = nystrom_pair("cpu", 16, mode, value)
    with cpu.use_isa(isa):
        check_gradients(op, ref, (q, k, v, random_conv("cpu", 2, 33)), torch.float32)


@pytest.mark.parametrize("mode", ["clean", "seed"])
def test_one_sequence_split_over_threads(many_threads, mode):
    """B = H = 1 and more threads than (b, h) pairs: the token splits' partials (the online softmax
    of A3·v, the gradient sums) merge into the one-task result."""
    op, ref = nystrom_pair("cpu", 16, mode, "v")
    check_gradients(op, ref, (*packed_qkv("cpu", 1, 700, 1, 16, torch.float32, "v"), random_conv("cpu", 1, 33)),
                    torch.float32)


def test_auto_backend_picks_the_cpu_kernels():
    assert select(OP, torch.device("cpu"), "auto") == "cpu"
    q, k, v = packed_qkv("cpu", 1, 20, 2, 16, torch.float32, "v")
    out = armour_kernels.nystrom_attention(q, k, v, num_landmarks=4)
    expected = armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, backend="reference")
    assert_close(out, expected, torch.float32)


def test_extension_checks_its_inputs():
    """The C++ kernels' own checks, which direct callers of the dispatcher op reach (the public op's
    are test_nystrom_op.py's)."""
    q, k, v = packed_qkv("cpu", 1, 20, 2, 16, torch.float32, "v")
    with pytest.raises(RuntimeError, match="must agree"):
        torch.ops.armour_kernels.nystrom_fwd(q, k[..., :8], v, None, 4, 6, "clean")
    with pytest.raises(RuntimeError, match="mode"):
        torch.ops.armour_kernels.nystrom_fwd(q, k, v, None, 4, 6, "dirty")
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        torch.ops.armour_kernels.nystrom_fwd(q.double(), k.double(), v.double(), None, 4, 6, "clean")


@pytest.mark.parametrize("value", ["v", "q"])
def test_dispatcher_op_runs_without_python(value):
    """The op behind backend="cpu": C++ kernels and autograd (the conv weight's gradient included),
    no backend argument, no double backward."""
    q, k, v = (t.requires_grad_() if t is not None else None
               for t in packed_qkv("cpu", 1, 20, 2, 16, torch.float32, value))
    check_dispatcher_op("nystrom", (q, k, v, random_conv("cpu", 2, 5).requires_grad_(), 4, 6, "seed"))
