"""NaN and inf in, NaN out for the Performer op on every backend and every CPU ISA path, against
python_ref in float64: the output and every gradient are NaN exactly where the reference's are
(docs/numerics.md). mode "seed" shares the key stabiliser (the max of u over the batch), so a NaN
key reaches every (b, h) there; the kernels' max reductions must not drop it."""
import pytest
import torch

from armour_kernels import cpu
from helpers import backend_params
from linear_attention_checks import check_nan_positions, packed_qkv, performer_pair, poisoned, random_projection

NAN, INF = float("nan"), float("inf")
POISONS = [("q", (0, 7, 1, 3), NAN), ("k", (1, 20, 0, 5), NAN), ("v", (0, 9, 1, 2), NAN), ("k", (1, 3, 0, 0), INF)]
POISON_IDS = ["nan_q", "nan_k", "nan_v", "inf_k"]
def inputs(backend):
    torch.manual_seed(0)
    return packed_qkv(backend, 2, 45, 2, 16, torch.float32, "v")


@pytest.mark.parametrize("kernel, mode", [("softmax", "clean"), ("softmax", "seed"), ("relu", "clean")])
@pytest.mark.parametrize("poison", POISONS, ids=POISON_IDS)
@pytest.mark.parametrize("backend", backend_params(op="performer_attention"))
def test_nan_and_inf_follow_the_reference(backend, poison, kernel, mode):
    tensors = poisoned(inputs(backend), *poison)
    op, ref = performer_pair(backend, random_projection(backend, 16, 24), kernel, mode, "v")
    check_nan_positions(op, ref, tensors, torch.float32)


@pytest.mark.cpu_kernels
@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512", "amx"])
@pytest.mark.parametrize("poison", POISONS[:3], ids=POISON_IDS[:3])
def test_every_cpu_isa_path_seed_mode(isa, poison):
    if not cpu.has_op("performer_attention") or isa not in cpu.supported_isas():
        pytest.skip(f"no {isa} Performer kernels here")
    tensors = poisoned(inputs("cpu"), *poison)
    op, ref = performer_pair("cpu", random_projection("cpu", 16, 24), "softmax", "seed", "v")
    with cpu.use_isa(isa):
        check_nan_positions(op, ref, tensors, torch.float32)
