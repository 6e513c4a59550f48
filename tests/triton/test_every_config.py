"""Every autotune config of every Triton kernel, forced in turn, against python_ref (bench/every_config.py).

In the interpreter the autotuner never runs (one fixed small tile), so without this only the
interpreter's tile and, on a GPU, the winning config of each key would ever be checked. Small
shapes whose row and key counts are off every tile size: partial blocks, a fully masked row, the
table gradient (atomic and deterministic), a broadcast dense bias, Nq ≠ Nk, every value source.
On a GPU, bench/gpu_sweep.py runs the same checks at the DeiT / LeViT shapes.
"""
import sys

import pytest
import torch

from helpers import HAS_CUDA, ROOT, TRITON_DTYPES, dtype_name

sys.path.insert(0, str(ROOT / "bench"))
import every_config as ec  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
ATTENTION = ec.attention_configs()


@pytest.mark.parametrize("i", range(len(ATTENTION)), ids=[ec.config_label(n, c) for n, c in ATTENTION])
def test_attention_config(i):
    """Each config on one of the small cases in turn (so every case meets every kernel), in fp32;
    16-bit inputs on the first config of each kernel (the interpreter's time is per program)."""
    name, config = ATTENTION[i]
    first = i == 0 or ATTENTION[i - 1][0] != name
    for dtype in TRITON_DTYPES if first else [torch.float32]:
        case = ec.SMALL_ATTENTION[i % len(ec.SMALL_ATTENTION)]
        for label, error, worst in ec.check_attention_config(name, config, [case], dtype, DEVICE):
            assert error == error, (label, dtype_name(dtype))


LINEAR_ACT = ec.linear_act_configs()


@pytest.mark.parametrize("config", LINEAR_ACT, ids=[ec.config_label("linear_act", c) for c in LINEAR_ACT])
def test_linear_act_config(config):
    for dtype in TRITON_DTYPES:
        ec.check_linear_act_config(config, dtype, DEVICE, rows=(77,) if dtype != torch.float32 else (77, 300))


@pytest.mark.parametrize("n, m", ec.NYSTROM_TILES)
def test_nystrom_tiles(n, m):
    ec.check_nystrom(n, m, torch.float32, DEVICE)


@pytest.mark.parametrize("n, m, d", ec.PERFORMER_TILES)
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_performer_tiles(n, m, d, kernel):
    ec.check_performer(n, m, d, torch.float32, DEVICE, kernel=kernel)


def test_forcing_an_unknown_kernel_is_an_error():
    from armour_kernels.triton.attention import forced_configs
    with pytest.raises(ValueError, match="unknown kernels"):
        with forced_configs(bwd=ATTENTION[0][1]):
            pass
