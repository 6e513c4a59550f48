"""`armour-bench export <timm name>`: an AOTInductor package (.pt2) of a model, ready to serve.

Builds the timm model (`pretrained=False` unless --pretrained: no network needed; the Armour
names of `armour_kernels.timm`, e.g. armour_deit_tiny_patch16_224, work too), prepares it as
`armour_kernels.optimize` does (BatchNorm folded, fused kernels, weights cast to --dtype) and
writes it with `armour_kernels.export_package`. Then, unless --no-check, it loads the
package back and prints its largest difference from the eager model on a random batch.

Serve it from any Python with torch and armour_kernels installed:

    import armour_kernels, torch
    model = armour_kernels.load_package("levit_128s-fp32-b1.pt2")
    logits = model(images)        # (batch, 3, 224, 224) float32, the batch size exported

Inductor's C++ kernels are built for --threads (default: torch's current thread count). Takes
about a minute for LeViT-128S or DeiT-Ti on a 2-core CPU.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .kernels import DTYPES


def add_arguments(parser):
    parser.add_argument("name", help="timm model name (levit_128s, deit_tiny_patch16_224, armour_deit_tiny_patch16_224, …)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weights and compute dtype")
    parser.add_argument("--batch-size", type=int, default=1, help="the batch size compiled in (default 1)")
    parser.add_argument("--dynamic-batch", action="store_true", help="one package for every batch size")
    parser.add_argument("--out", type=Path, default=None, help="package path (default <name>-<dtype>-b<batch>.pt2)")
    parser.add_argument("--pretrained", action="store_true", help="load timm's pretrained weights (downloads)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads the package is built for")
    parser.add_argument("--img-size", type=int, default=None, help="input resolution (default: the model's)")
    parser.add_argument("--tiny", action="store_true",
                        help="32×32 images and one block per stage (a fast smoke test of the whole path)")
    parser.add_argument("--max-autotune", action="store_true",
                        help="benchmark inductor's GEMM templates against MKL / oneDNN while compiling (slower "
                             "build, ~6%% faster LeViT-128S at batch 1 on Sapphire Rapids)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="do not load the package back to compare it with the eager model")


def create_model(name: str, *, pretrained: bool = False, tiny: bool = False, img_size: int | None = None):
    """The timm model `name` in eval mode, seeded (pretrained=False gives the same weights every time);
    tiny: one block per stage (with img_size=32: a model that compiles in seconds)."""
    import timm

    import armour_kernels.timm  # noqa: F401  (registers the armour_* names)
    kwargs = {}
    if tiny:
        kwargs["depth"] = (1, 1, 1) if "levit" in name else 1
    if img_size:
        kwargs["img_size"] = img_size
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=pretrained, **kwargs).eval()


def input_size(model, img_size: int | None = None) -> int:
    """The image side the model takes: `img_size` when given, else what the model says (224 by default)."""
    if img_size:
        return img_size
    for size in (getattr(model, "img_size", None), getattr(getattr(model, "patch_embed", None), "img_size", None),
                 (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (224,))[-1]):
        if size:
            return size[0] if isinstance(size, (tuple, list)) else int(size)
    return 224


def example_input(model, batch: int, img_size: int | None = None) -> torch.Tensor:
    size = input_size(model, img_size)
    torch.manual_seed(1)
    return torch.randn(batch, 3, size, size)


def run(args) -> int:
    from armour_kernels.export import export_package, load_package

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    out = args.out or Path(f"{args.name}-{args.dtype}-b{'N' if args.dynamic_batch else args.batch_size}.pt2")
    img_size = args.img_size or (32 if args.tiny else None)
    model = create_model(args.name, pretrained=args.pretrained, tiny=args.tiny, img_size=img_size)
    x = example_input(model, args.batch_size, img_size)
    print(f"armour-bench export: {args.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), "
          f"{args.dtype}, input {tuple(x.shape)}, {torch.get_num_threads()} threads", flush=True)
    start = time.perf_counter()
    path = export_package(model, x, out, dtype=dtype, dynamic_batch=args.dynamic_batch, max_autotune=args.max_autotune)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s")
    if args.check:
        with torch.no_grad():
            expected = model(x)
            got = load_package(path)(x)
        error = (got.float() - expected).abs().max().item()
        scale = max(1.0, expected.abs().max().item())
        tolerance = 1e-3 if dtype == torch.float32 else 1e-1
        verdict = "ok" if error <= tolerance * scale else "TOO LARGE"
        print(f"check: package vs eager model, max |difference| {error:.2e} (outputs up to {scale:.2f}): {verdict}")
        return 0 if verdict == "ok" else 1
    return 0
