"""NaN and inf in, NaN out for the Nyström op on every backend and every CPU ISA path, against
python_ref in float64: the output and every gradient are NaN exactly where the reference's are
(docs/numerics.md). mode "clean" keeps a NaN inside its own (b, h); mode "seed" shares the pinv's
scale over the batch, so a NaN in the landmarks reaches every (b, h) there."""
import pytest
import torch

from armour_kernels import cpu
from helpers import backend_params
from linear_attention_checks import check_nan_positions, nystrom_pair, packed_qkv, poisoned, random_conv

NAN, INF = float("nan"), float("inf")
# (input, element, value): one token of one head
POISONS = [("q", (0, 7, 1, 3), NAN), ("v", (0, 9, 1, 2), NAN), ("q", (1, 3, 0, 0), INF),
           ("conv_weight", (1, 0, 4, 0), NAN), ("k", (1, 20, 0, 5), NAN)]
POISON_IDS = ["nan_q", "nan_v", "inf_q", "nan_conv", "nan_k"]
# mode "seed": the pinv scale's gradient is summed over the batch and sent back through the maxima of
# A2's abs-sums, batch-wide. Which (b, h) holds a maximum decides where python_ref's max sends a NaN
# gradient (a float32 and a float64 run can disagree), and the C++ side's max_grad
# (csrc/nystrom_pinv.cpp) multiplies it by the 0 / 1 hit mask, so it reaches every (b, h): in seed
# mode the gradients need only be NaN wherever the reference's are. python_ref itself in float32 (the
# "reference" backend) sends them through its own float32 maxima, which need not be the float64 run's
# (seen on an AMD EPYC with AVX2): there only the output is compared.


def inputs(backend):
    torch.manual_seed(0)
    q, k, v = packed_qkv(backend, 2, 45, 2, 16, torch.float32, "v")
    return (q, k, v, random_conv(backend, 2, 9))


@pytest.mark.parametrize("mode", ["clean", "seed"])
@pytest.mark.parametrize("poison", POISONS[:4], ids=POISON_IDS[:4])
@pytest.mark.parametrize("backend", backend_params(op="nystrom_attention"))
def test_nan_and_inf_follow_the_reference(backend, poison, mode):
    op, ref = nystrom_pair(backend, 8, mode, "v")
    check_nan_positions(op, ref, poisoned(inputs(backend), *poison), torch.float32, grads_cover=mode == "seed",
                        grads=not (mode == "seed" and backend == "reference"))


@pytest.mark.cpu_kernels
@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512", "amx"])
@pytest.mark.parametrize("poison", [POISONS[0], POISONS[1], POISONS[4]], ids=["nan_q", "nan_v", "nan_k"])
def test_every_cpu_isa_path(isa, poison):
    """clean mode (each (b, h) alone) and 8 landmarks: on AVX-512 the landmark rows are padded to
    16 lanes, whose scratch a NaN (b, h) must not leave NaN for the next one."""
    if not cpu.has_op("nystrom_attention") or isa not in cpu.supported_isas():
        pytest.skip(f"no {isa} Nyström kernels here")
    op, ref = nystrom_pair("cpu", 8, "clean", "v")
    with cpu.use_isa(isa):
        check_nan_positions(op, ref, poisoned(inputs("cpu"), *poison), torch.float32)
