"""How far TF32 and 3×TF32 dot products move Nyström and Performer from the fp64 reference,
emulated on the CPU (no GPU needed; the Triton interpreter computes every dot in fp32, so it
cannot show this).

python_ref's algorithms run in float64 with every matrix product's operands rounded the way the
tensor cores round them (a TorchFunctionMode intercepts `@` / matmul / bmm):
  tf32     both operands rounded to TF32 (10 explicit mantissa bits, round to nearest even),
           the product accumulated exactly (the hardware accumulates in fp32: a smaller error)
  tf32x3   Triton's 3×TF32: a = a_hi + a_lo, a·b ≈ a_hi·b_hi + a_hi·b_lo + a_lo·b_hi
  ieee     plain float32 throughout (PyTorch's CPU matmul), the old kernels' precision
against the same algorithm in float64, on the Vision Xformers layer (B = 2, n = 1025, H = 4,
d = 32; Nyström m = 64 landmarks, 6 pinv iterations; Performer 110 softmax features). Reported:
‖out − ref‖ / ‖ref‖ and max |out − ref| / max |ref|, forward outputs.

    python bench/tf32_emulation.py            # prints a markdown table
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

import python_ref

MATMULS = {torch.matmul, torch.Tensor.__matmul__, torch.Tensor.matmul, torch.bmm, torch.Tensor.bmm}


def tf32(x: torch.Tensor) -> torch.Tensor:
    """x rounded to TF32 (float32 with its 13 low mantissa bits cleared, round to nearest even), as float64."""
    bits = x.to(torch.float32).view(torch.int32)
    bias = 0x0FFF + ((bits >> 13) & 1)
    return ((bits + bias) & ~0x1FFF).view(torch.float32).to(torch.float64)


class RoundedDots(TorchFunctionMode):
    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in MATMULS:
            return func(*args, **kwargs)
        a, b = args[0], args[1]
        if self.mode == "tf32":
            return func(tf32(a), tf32(b), *args[2:], **kwargs)
        a_hi, b_hi = tf32(a), tf32(b)
        a_lo, b_lo = tf32(a.double() - a_hi), tf32(b.double() - b_hi)
        return func(a_hi, b_hi, **kwargs) + func(a_hi, b_lo, **kwargs) + func(a_lo, b_hi, **kwargs)


def _errors(out, ref):
    diff = (out.double() - ref).flatten()
    return (diff.norm() / ref.norm()).item(), (diff.abs().max() / ref.abs().max()).item()


def main():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 1025, 32, dtype=torch.float64) for _ in range(3))
    conv = torch.randn(4, 1, 33, 1, dtype=torch.float64) * 0.2
    projection = python_ref.gaussian_orthogonal_random_matrix(110, 32).double()
    layers = {
        "Nyström m=64 (clean)": lambda q, k, v, c, p: python_ref.nystrom_attention(
            q, k, v, num_landmarks=64, mode="clean", conv_weight=c),
        "Performer softmax 110 (clean)": lambda q, k, v, c, p: python_ref.performer_attention(
            q, k, v, projection=p, kernel="softmax", mode="clean"),
        "Performer relu 110": lambda q, k, v, c, p: python_ref.performer_attention(
            q, k, v, projection=p, kernel="relu", mode="clean"),
    }
    lines = ["| layer | dots | ‖Δ‖/‖ref‖ | max|Δ| / max|ref| |", "|---|---|---|---|"]
    for name, layer in layers.items():
        ref = layer(q, k, v, conv, projection)
        out32 = layer(q.float(), k.float(), v.float(), conv.float(), projection.float())
        rel, mx = _errors(out32, ref)
        lines.append(f"| {name} | IEEE fp32 | {rel:.2e} | {mx:.2e} |")
        for mode in ("tf32x3", "tf32"):
            with RoundedDots(mode):
                out = layer(q, k, v, conv, projection)
            rel, mx = _errors(out, ref)
            lines.append(f"| {name} | {'3×TF32' if mode == 'tf32x3' else 'TF32'} (emulated) | {rel:.2e} | {mx:.2e} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
