"""The Nyström and Performer Triton kernels compile for an H100 (sm_90) on a machine without a GPU.

The interpreter tests check the numbers; this lowers the same kernels through Triton's GPU
pipeline (TTIR → TTGIR → PTX → cubin with the bundled ptxas), which the interpreter never does,
and checks each fits the H100's shared memory. The launchers run on CPU tensors with every
`kernel[grid](...)` replaced by a compile of that exact launch (its argument types and
constexprs), so the signatures tested are the ones the launchers really use. In a subprocess:
TRITON_INTERPRET must be unset there.
"""
from conftest import run_compiled_script

SCRIPT = r'''
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from armour_kernels.triton.nystrom import nystrom_backward, nystrom_forward
from armour_kernels.triton.performer import performer_backward, performer_forward
from python_ref.performer import gaussian_orthogonal_random_matrix

H100_SHARED = 232448
TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
done = set()


def compile_instead(self, grid):
    def launch(*args, num_warps=4, num_stages=3, **kwargs):
        bound = dict(zip(self.arg_names, args), **kwargs)
        signature, constexprs = {}, {}
        for p in self.params:
            value = bound[p.name]
            if p.is_constexpr:
                signature[p.name], constexprs[p.name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[p.name] = TYPES[value.dtype]
            else:
                signature[p.name] = "i32" if isinstance(value, int) else "fp32"
        key = (self.__name__, str(signature), str(constexprs), num_warps, num_stages)
        if key in done:
            return
        done.add(key)
        kernel = triton.compile(ASTSource(self, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": num_warps, "num_stages": num_stages})
        assert kernel.metadata.shared <= H100_SHARED, (self.__name__, kernel.metadata.shared, constexprs)
    return launch


JITFunction.__getitem__ = compile_instead
B, n, H = 1, 300, 2
# Nyström: the paper's m = 64 at d = 32 in fp16, seed mode (maxima pre-pass), Armour value, conv.
q, k = (torch.randn(B, n, H, 32, dtype=torch.float16) for _ in range(2))
conv = torch.randn(H, 1, 33, 1)
out, saved = nystrom_forward(q, k, None, conv, num_landmarks=64, mode="seed", value="q")
nystrom_backward(torch.randn_like(out), q, k, None, conv, saved, num_landmarks=64, mode="seed", value="q")
# Performer: performer-pytorch's default m = 266 at d = 64 (feature chunks) in bf16, seed mode, v.
q, k, v = (torch.randn(B, n, H, 64, dtype=torch.bfloat16) for _ in range(3))
projection = gaussian_orthogonal_random_matrix(266, 64)
out, ctx, ksum, stab = performer_forward(q, k, v, projection, kernel="softmax", mode="seed", value="v")
performer_backward(torch.randn_like(out), q, k, v, projection, ctx, ksum, stab, kernel="softmax", mode="seed",
                   value="v")
print("compiled", len(done))
'''


def test_kernels_compile_for_sm90():
    run_compiled_script(SCRIPT, timeout=600)
