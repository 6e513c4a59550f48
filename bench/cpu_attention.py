"""CPU attention speed: armour_kernels' C++ kernels vs F.scaled_dot_product_attention.

DeiT-Ti shapes by default (B=64, N=197, H=3, d=64), q/k/v read in place from a packed
(B, N, 3, H, d) projection output (as a fused model does), 2 threads. Timings are the minimum
over rounds, the two implementations interleaved, so a shared machine's noise hurts both alike.

    PYTHONPATH=. python bench/cpu_attention.py [--threads 2] [--value v] [--isa avx512 avx2]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from cpu_timing import best_ms  # bench/cpu_timing.py (the script directory is on sys.path)

from armour_kernels import cpu
from armour_kernels.cpu.attention import attention_backward, attention_forward


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=197)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--inner", type=int, default=3)
    p.add_argument("--isa", nargs="*", default=None, help="ISAs to time (default: all but scalar)")
    p.add_argument("--dtype", nargs="*", default=["float32", "bfloat16"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    isas = args.isa or [i for i in cpu.supported_isas() if i != "scalar"]
    B, N, H, D = args.batch, args.tokens, args.heads, args.dim
    print(f"B={B} N={N} H={H} d={D} threads={args.threads}; times in ms (min of {args.rounds} rounds)")
    for dname in args.dtype:
        dtype = getattr(torch, dname)
        x = torch.randn(B, N, 3, H, D).to(dtype)
        q, k, v = x[:, :, 0], x[:, :, 1], x[:, :, 2]
        qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
        qg, kg, vg = (t.detach().requires_grad_() for t in (qs, ks, vs))
        dout = torch.randn(B, N, H, D).to(dtype)
        dout_s = dout.transpose(1, 2)

        def sdpa_fwd():
            F.scaled_dot_product_attention(qs, ks, vs)

        def sdpa_fwd_bwd():
            o = F.scaled_dot_product_attention(qg, kg, vg)
            torch.autograd.grad(o, (qg, kg, vg), dout_s)

        def ours_fwd():
            attention_forward(q, k, v, None, None, value="v", scale=None, mask_diagonal=False)

        def ours_fwd_bwd():
            o, lse = attention_forward(q, k, v, None, None, value="v", scale=None, mask_diagonal=False)
            attention_backward(dout, q, k, v, None, None, o, lse, value="v", scale=None, mask_diagonal=False,
                               need_dbias=False)

        for isa in isas:
            with cpu.use_isa(isa):
                best = {name: float("inf") for name in ("sf", "sb", "of", "ob")}
                for _ in range(args.rounds):  # interleave: a noisy neighbour slows both
                    for name, fn in (("sf", sdpa_fwd), ("of", ours_fwd), ("sb", sdpa_fwd_bwd), ("ob", ours_fwd_bwd)):
                        best[name] = min(best[name], best_ms(fn, 1, args.inner))
            print(f"{dname:9s} {isa:7s} fwd: sdpa {best['sf']:7.1f}  ours {best['of']:7.1f}  ({best['sf'] / best['of']:.2f}x)"
                  f" | fwd+bwd: sdpa {best['sb']:7.1f}  ours {best['ob']:7.1f}  ({best['sb'] / best['ob']:.2f}x)")


if __name__ == "__main__":
    main()
