"""Every Triton kernel compiles for an H100 (sm_90) on a machine without a GPU, and fits it.

The interpreter tests check the numbers; this lowers the same sources through Triton's GPU
pipeline (TTIR → TTGIR → PTX → cubin with the bundled ptxas), which the interpreter never does.
The real launchers run on CPU tensors under armour_bench.offline_compile.compiling_launches, so
the signatures compiled are the ones they use. Each compile must fit the H100's shared memory,
and at the DeiT / LeViT head dims the autotuner's first attention config must not spill
registers (the offline evidence behind the config lists: `armour-bench cubin`). In a subprocess:
TRITON_INTERPRET must be unset there.
"""
import pytest
from compiled_script import run_compiled_script

SCRIPT = r'''
import torch
from armour_bench.cubin import ATTENTION_CASES, attention_case, linear_act_case, linear_attention_case
from armour_bench.offline_compile import H100_SHARED_BYTES, compiling_launches

CASES = {case[0]: case for case in ATTENTION_CASES}
for problem, dtype, run in {PROBLEMS}:
    record = []
    with compiling_launches(record, max_configs=1):
        run(getattr(torch, dtype))
    assert record, problem
    for stats in record:
        assert stats.shared_bytes <= H100_SHARED_BYTES, (problem, stats)
        if {NO_SPILL} and stats.kernel.startswith("attention."):
            assert stats.spill_bytes == 0, (problem, stats)
print("compiled", sum(1 for _ in record))
'''


def _script(problems: str, no_spill: bool) -> str:
    return SCRIPT.replace("{PROBLEMS}", problems).replace("{NO_SPILL}", str(no_spill))


@pytest.mark.parametrize("case", ["DeiT-Ti Armour", "LeViT armour q+v 16/16+32 table", "LeViT subsample 16/64 table",
                                  "shared_qk_nodiag d=64"])
def test_attention_compiles_for_sm90_without_spills(case):
    problems = f'[("{case}", "bfloat16", lambda dtype: attention_case(dtype, *CASES["{case}"][1:]))]'
    run_compiled_script(_script(problems, no_spill=True), timeout=300)


def test_wide_head_dims_and_fp16_compile_for_sm90():
    problems = ('[("Armour d=256", "float16", lambda dtype: attention_case(dtype, *CASES["Armour d=256"][1:])), '
                '("dense bias d=64", "float32", lambda dtype: attention_case(dtype, *CASES["dense bias d=64"][1:]))]')
    run_compiled_script(_script(problems, no_spill=False), timeout=300)


def test_linear_act_nystrom_performer_compile_for_sm90():
    problems = ('[("linear_act", "bfloat16", linear_act_case), ("linear_act fp32", "float32", linear_act_case), '
                '("nystrom / performer", "bfloat16", linear_attention_case)]')
    run_compiled_script(_script(problems, no_spill=False), timeout=600)


def test_report_names_the_first_spill_free_config():
    """`armour-bench cubin`'s table: per kernel, the count of spilling configs and the best one."""
    from armour_bench.cubin import markdown

    def row(config, spill, warps=8):
        return dict(kernel="attention.k", config=config, num_warps=warps, num_stages=3, registers=255,
                    spill_bytes=spill, shared_bytes=32768, wgmma=8, mma_sync=0)

    env = dict(device="none", threads=2, command="armour-bench cubin", torch="2.11")
    table = markdown(env, {"problem": [row("M=128 N=64", 96), row("M=64 N=64", 0), row("M=32 N=32", 0, 4)]}, 90)
    assert "| problem | attention.k | 3 | 1 | M=64 N=64 | 8/3 | 255 | 0 | 32 | 8 | 0.0 |" in table
    assert "mma.sync | compile s |" in markdown(env, {"problem": [row("M=64 N=64", 0)]}, 80)  # sm_80: no wgmma


def test_report_compiles_with_the_launch_specialisation():
    """The offline compile specialises each launch as a GPU launch would (Triton's binder): unit
    strides become constants, 16-divisible sizes / strides and aligned pointers get divisibility
    hints, and the autotuning buckets (do_not_specialize) get neither."""
    script = r'''
import torch
from triton.runtime.jit import KernelInterface
from armour_kernels.triton import attention as ta
from armour_bench.offline_compile import launch_specialisation

launches = []
KernelInterface.__getitem__ = lambda self, grid: (lambda *a, **kw: launches.append((self, a, kw)))
packed = torch.randn(2, 197, 4, 3 * 64)
q, k, v = packed.split(64, dim=-1)
ta.triton_interpreting = lambda: True  # the plain launch (the autotuner would add a config's kwargs)
ta.attention_forward(q, k, v, None, None, value="v", scale=None, mask_diagonal=False)
fn, args, kwargs = launches[0]
signature, constexprs, named, attrs, options = launch_specialisation(fn, args, kwargs)
names = fn.arg_names
hinted = {names[path[0]] for path, hints in attrs.items() if hints}
assert named["sqd"] == 1 and signature["sqd"] == "constexpr", named   # unit stride: a constant
assert {"Q", "K", "V1", "sqn", "sqb", "DQK"} <= hinted, hinted            # aligned / 16-divisible
assert not {"NQ_BUCKET", "NK_BUCKET", "BH"} & (hinted | set(named)), hinted  # batch-dependent: not specialised
assert signature["NQ"] == "i32" and "NQ" not in hinted                    # 197: no hint
print("compiled")
'''
    run_compiled_script(script, timeout=300)


def test_a_new_batch_size_compiles_nothing_new():
    """Every launch of a forward + backward (attention with the LeViT table, Nyström, Performer seed,
    linear_act) is specialised the same way at batch 1, 3 and 16: the batch's launch scalars are
    not specialised, so a new batch size reuses the compiled kernels."""
    script = r'''
import torch
from triton.runtime.jit import KernelInterface
from armour_kernels.triton import attention as ta, linear_act as tla, nystrom as tn, performer as tp
from armour_bench.offline_compile import launch_specialisation

launches = []
KernelInterface.__getitem__ = lambda self, grid: (lambda *a, **kw: launches.append((self, a, kw)))
ta.triton_interpreting = tla.triton_interpreting = lambda: True  # plain launches, fixed blocks
projection = torch.randn(24, 16)

def specialisations(batch):
    launches.clear()
    q, k, v = (torch.randn(batch, 49, 4, 16) for _ in range(3))
    table, index = torch.randn(4, 49), torch.randint(0, 49, (49, 49))
    kw = dict(value="q+v", scale=None, mask_diagonal=False)
    out, lse = ta.attention_forward(q, k, v, table, index, **kw)
    ta.attention_backward(torch.randn_like(out), q, k, v, table, index, out, lse, need_dbias=True, **kw)
    out, saved = tn.nystrom_forward(q, k, v, None, num_landmarks=8, mode="seed")
    tn.nystrom_backward(torch.randn_like(out), q, k, v, None, saved, num_landmarks=8, mode="seed")
    out, ctx, ksum, stab = tp.performer_forward(q, k, v, projection, kernel="softmax", mode="clean", value="v")
    tp.performer_backward(torch.randn_like(out), q, k, v, projection, ctx, ksum, stab, kernel="softmax",
                          mode="clean", value="v")
    tla.linear_act_forward(torch.randn(batch * 49, 64), torch.randn(32, 64), act_out=True)
    found = set()
    for fn, args, kwargs in launches:
        signature, _, named, attrs, _ = launch_specialisation(fn, args, kwargs)
        found.add((fn.__name__, str(signature), str(sorted(named.items())), str(attrs)))
    return found

one, three, sixteen = (specialisations(b) for b in (1, 3, 16))
assert one == three == sixteen, (one ^ sixteen) | (three ^ sixteen)
print("compiled", len(one))
'''
    run_compiled_script(script, timeout=300)
