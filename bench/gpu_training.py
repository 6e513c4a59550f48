"""One training step of Armour-Ti and LeViT-128S on the Triton kernels against timm (bench/gpu_sweep.py train).

Each pair is built with the same architecture: Armour-Ti (armour_kernels.timm, the Armour attention
on the fused kernels) against timm's DeiT-Ti (regular attention through SDPA), and timm's LeViT-128S
patched onto the fused kernels against the same model unpatched. A step is forward, cross-entropy,
backward and AdamW, under bf16 autocast (fp32 weights) on a GPU; the time is the median step's
wall time and the memory the peak allocated during the timed steps.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F


def _models(pair, dry_run):
    import timm

    import armour_kernels
    import armour_kernels.timm  # noqa: F401  (registers the Armour models)
    if pair == "Armour-Ti vs DeiT-Ti":
        size = dict(img_size=32, depth=1) if dry_run else {}
        ours = timm.create_model("armour_deit_tiny_patch16_224", backend="triton", **size)
        theirs = timm.create_model("deit_tiny_patch16_224", **size)
        return ours, theirs, size.get("img_size", 224)
    size = dict(img_size=64, depth=(1, 1, 1)) if dry_run else {}
    ours = armour_kernels.patch(timm.create_model("levit_128s", **size), backend="triton")
    theirs = timm.create_model("levit_128s", **size)
    return ours, theirs, size.get("img_size", 224)


def _step_fn(model, images, labels, autocast):
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    return step


def _time_steps(step, steps, device):
    cuda = device.type == "cuda"
    loss = step()  # first step: compiles and autotunes on a cold cache
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None
    return statistics.median(times), peak, float(loss.detach())


def run(device, batch, steps, dry_run):  # dry run: tiny images, one block per stage
    """[{pair, model, step_ms, images_per_s, peak_mib, loss}] for both pairs."""
    rows = []
    for pair in ("Armour-Ti vs DeiT-Ti", "LeViT-128S fused vs timm"):
        ours, theirs, size = _models(pair, dry_run)
        torch.manual_seed(0)
        images = torch.randn(batch, 3, size, size, device=device)
        labels = torch.randint(0, 1000, (batch,), device=device)
        for name, model in (("armour_kernels", ours), ("timm", theirs)):
            model = model.to(device)
            ms, peak, loss = _time_steps(_step_fn(model, images, labels, device.type == "cuda"), steps, device)
            rows.append(dict(pair=pair, model=name, batch=batch, step_ms=round(ms, 2),
                             images_per_s=round(batch / ms * 1e3, 1),
                             peak_mib=None if peak is None else round(peak, 1), loss=round(loss, 4)))
            model.to("cpu")
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows
