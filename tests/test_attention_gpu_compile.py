"""The Triton attention kernels compile for an H100 (sm_90) on a machine without a GPU.

The interpreter tests check the numbers; this checks that the same source lowers through
Triton's GPU pipeline (TTIR → TTGIR → PTX → cubin with the bundled ptxas), which the
interpreter never does. It runs in a subprocess because TRITON_INTERPRET must be unset there.
"""
from conftest import run_compiled_script

SCRIPT = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from armour_kernels.triton import attention as A

POINTERS = {"Q", "K", "V1", "V2", "Bias", "Out", "DO", "DK", "DV", "DQ"}
TYPED = {"Lse": "*fp32", "Delta": "*fp32", "DQAcc": "*fp32", "DBias": "*fp32", "BiasIdx": "*i64", "KeepDiag": "*i8"}


def build(fn, dtype, constexprs, num_warps, num_stages):
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in TYPED:
            signature[name] = TYPED[name]
        elif name in POINTERS:
            signature[name] = "*" + dtype
        else:
            signature[name] = "fp32" if name in ("qk_scale", "sm_scale") else "i32"
    triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": num_warps, "num_stages": num_stages})


# LeViT "q+v" with the table bias and its gradient, the diagonal mask; then Armour at d=128.
for dtype, dk, d1, d2, p1, p2, bias, mask in [("fp16", 16, 16, 32, 2, 1, 2, True), ("bf16", 128, 128, 0, 2, 0, 0, False)]:
    blocks = dict(BLOCK_M=128, BLOCK_N=64, BLOCK_DK=dk, BLOCK_D1=d1, BLOCK_D2=d2 or 16)
    common = dict(BIAS=bias, MASK_DIAG=mask, PREC=None, **blocks)
    build(A._attention_fwd_kernel, dtype, dict(common, HAS_P2=bool(d2)), 8, 3)
    build(A._attention_bwd_dkdv_kernel, dtype, dict(common, P1=p1, P2=p2, NEED_DBIAS=bias != 0), 8, 3)
    build(A._attention_bwd_dq_kernel, dtype, dict(common, P1=p1, P2=p2), 8, 3)
build(A._attention_bwd_preprocess_kernel, "fp16", dict(BLOCK_M=64, BLOCK_D=64), 4, 1)
print("compiled")
'''


def test_kernels_compile_for_sm90():
    run_compiled_script(SCRIPT, timeout=300)
