"""CPU Linear + bias + Hardswish: the op's GEMM choices vs F.hardswish(F.linear(...)).

LeViT-128S/192 MLP first-layer shapes by default; 2 threads; minimum over interleaved rounds.

    PYTHONPATH=. python bench/cpu_linear_act.py
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from cpu_timing import best_ms  # bench/cpu_timing.py (the script directory is on sys.path)

from armour_kernels.cpu.linear_act import linear_hardswish_forward


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for rows, cin, cout in ((64 * 196, 128, 256), (64 * 196, 192, 384), (64 * 49, 256, 512)):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(rows, cin).to(dtype)
            w = (torch.randn(cout, cin) / cin ** 0.5).to(dtype)
            b = torch.randn(cout).to(dtype)
            ref = best_ms(lambda: F.hardswish(F.linear(x, w, b)), args.rounds)
            mm = best_ms(lambda: torch.mm(x, w.t()), args.rounds)
            ours = {g: best_ms(lambda: linear_hardswish_forward(x, w, b, gemm=g), args.rounds)
                    for g in ("onednn_fused", "onednn", "aten")}
            print(f"{rows}x{cin}->{cout} {str(dtype)[6:]:8s} F.hardswish(F.linear) {ref:6.2f} ms | mm alone {mm:6.2f} | "
                  + " | ".join(f"{g} {t:6.2f} ({ref / t:.2f}x)" for g, t in ours.items()))


if __name__ == "__main__":
    main()
