"""Training with the fused ops: DistributedDataParallel equals one process, and a small Armour model
trained on scikit-learn's digits follows its python_ref twin's loss curve.

Fused backend: the C++ CPU kernels ("auto") when built. Without them DDP runs the op's
"reference" backend and the convergence run is skipped (the Triton interpreter is too slow for
50 training steps).
"""
import contextlib
import copy
import os
import socket

import pytest
import torch
import torch.nn.functional as F

import python_ref
from armour_kernels import patch
from armour_kernels.backend import cpu_has_op
from armour_kernels.nn.attention import FusedDeiTAttention

# A small Armour ViT for 8×8 images: 16 patches of 2×2 + class token = 17 tokens, 2 heads of 16.
SMALL_VIT = dict(img_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2, num_classes=10)
# For the digits run: 4×4 patches (4 + 1 tokens) learn within a few dozen steps; 2×2 ones take hundreds.
DIGITS_VIT = dict(SMALL_VIT, patch_size=4, embed_dim=64, num_heads=4)


def fused_backend() -> str:
    """The C++ kernels when built; else the op on its python_ref backend (same autograd op wiring)."""
    return "auto" if cpu_has_op("attention") else "reference"


def small_armour_vit(in_chans, config=SMALL_VIT, seed=0):
    torch.manual_seed(seed)
    return python_ref.create_model("deit_tiny_patch16_224", attention="armour", in_chans=in_chans, **config)


@contextlib.contextmanager
def one_thread():
    """Tiny GEMMs: one thread is fastest, and immune to contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- (a) DDP

WORLD = 2
STEPS = 3
GLOBAL_BATCH = 8


def _fixed_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, GLOBAL_BATCH, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (STEPS, GLOBAL_BATCH), generator=g)
    return x, y


def _train(model, x, y, wrap=None):
    """SGD on the steps of (x, y); returns the gradients of the first step."""
    net = wrap(model) if wrap is not None else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first_grads = None
    for step in range(x.shape[0]):
        opt.zero_grad()
        F.cross_entropy(net(x[step]), y[step]).backward()
        if first_grads is None:
            first_grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
    return first_grads


def _ddp_worker(rank, port, backend, out_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = patch(small_armour_vit(3), backend=backend)
        x, y = _fixed_data()
        shard = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        grads = _train(model, x[:, shard], y[:, shard], wrap=DistributedDataParallel)
        if rank == 0:
            torch.save({"grads": grads, "params": [p.detach() for p in model.parameters()]}, out_path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    backend = fused_backend()
    out_path = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(_free_port(), backend, str(out_path)), nprocs=WORLD, join=True)
    ddp = torch.load(out_path)

    model = patch(small_armour_vit(3), backend=backend)
    assert any(isinstance(m, FusedDeiTAttention) and m.variant == "armour" for m in model.modules())
    x, y = _fixed_data()
    with one_thread():
        grads = _train(model, x, y)
    for got, expected in zip(ddp["grads"], grads):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for got, expected in zip(ddp["params"], model.parameters()):
        torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- (b) convergence

def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    return (x - 0.5) / 0.5, torch.tensor(digits.target)


def test_digits_loss_curve_matches_reference():
    if not cpu_has_op("attention"):
        pytest.skip("needs the C++ CPU attention kernels (python setup.py build_ext --inplace)")
    x, y = _digits()
    steps, batch = 50, 32
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: steps * batch].view(steps, batch)
    reference = small_armour_vit(in_chans=1, config=DIGITS_VIT)
    fused = patch(copy.deepcopy(reference), backend=fused_backend())
    with one_thread():
        ref_curve, fused_curve = (_loss_curve(model, x, y, order) for model in (reference, fused))
    assert (ref_curve - fused_curve).abs().max() < 2e-3, (ref_curve, fused_curve)
    # learns: the last steps' loss is well below the first steps' (ln 10 ≈ 2.30 at the start)
    assert fused_curve[-5:].mean() < 0.7 * fused_curve[:5].mean(), fused_curve


def _loss_curve(model, x, y, order):
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    losses = []
    for idx in order:
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses)
