"""Compile the Triton kernels for an NVIDIA GPU on a machine without one, and read what they cost.

Triton lowers TTIR → TTGIR → PTX → cubin with the ptxas it bundles; no driver or GPU is needed.
The interpreter (TRITON_INTERPRET=1) checks the numbers but never runs this pipeline, so this is
how a CPU-only machine learns that a kernel builds for an H100 at all, and roughly how well:
`ptxas -v` gives registers per thread and the bytes spilled to local memory (the usual reason a
Triton config is slow), the cubin's shared memory must fit the SM, and the PTX shows whether the
matrix products became Hopper `wgmma` (warp-group, asynchronous) or the older `mma.sync`.

`compiling_launches()` is a context manager under which every `kernel[grid](...)` launch, plain or
autotuned, compiles instead of running: the launchers run on CPU tensors exactly as they would
on CUDA ones, and each launch is specialised by Triton's own binder for the values passed
(`launch_specialisation`: 16-divisible sizes and strides, aligned pointers, integers equal to 1
as constants), so what is compiled is what a GPU launch would compile, not a generic variant
with more registers and fewer vectorised accesses. Each autotuned launch compiles the configs
its pruner keeps (the shortlist a real first call benchmarks). Any arch Triton's NVIDIA backend
targets: 90 (H100 / H200: wgmma) and 80 (A100: mma.sync); the attention pruner is given that
arch's shared-memory limit while compiling. Must run with TRITON_INTERPRET unset.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

H100_SHARED_BYTES = 232448  # shared memory one block may use on sm_90 (227 KiB)
# ... per compute capability (the opt-in limit): what the offline compile prunes and checks against
SHARED_BYTES = {90: H100_SHARED_BYTES, 89: 101376, 86: 101376, 80: 166912}


@dataclass(frozen=True)
class CubinStats:
    kernel: str            # "<family module>.<kernel name>", e.g. "attention._attention_fwd_kernel"
    config: str            # the tile-size constexprs, e.g. "M=64 N=64" for BLOCK_M, BLOCK_N
    num_warps: int
    num_stages: int
    registers: int         # per thread (255 is the most a thread can have)
    spill_bytes: int       # spill stores to local memory, per thread
    shared_bytes: int
    wgmma: int             # Hopper warp-group MMA instructions in the PTX
    mma_sync: int          # pre-Hopper warp MMA instructions
    compile_s: float = 0.0  # seconds to compile (source → cubin, on this machine)

    def as_dict(self):
        return asdict(self)


def _ptxas() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill-store bytes) that `ptxas -v` reports for this PTX."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        result = subprocess.run([_ptxas(), "-v", "--gpu-name", gpu, f.name, "-o", os.devnull],
                                capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    registers = re.search(r"Used (\d+) registers", result.stderr)
    spills = re.search(r"(\d+) bytes spill stores", result.stderr)
    return int(registers.group(1)), int(spills.group(1)) if spills else 0


def _measure(fn: JITFunction, kernel, constexprs: dict, *, num_warps: int, num_stages: int, arch: int,
             seconds: float = 0.0) -> CubinStats:
    ptx = kernel.asm["ptx"]
    registers, spills = _ptxas_usage(ptx, arch)
    # The tile sizes name a config; feature-dim blocks (BLOCK_D*) follow from the problem.
    config = " ".join(f"{k[6:]}={v}" for k, v in constexprs.items() if k.startswith("BLOCK_") and not k.startswith("BLOCK_D"))
    family = fn.__module__.rsplit(".", 1)[-1]  # nystrom._output_kernel vs performer._output_kernel
    return CubinStats(kernel=f"{family}.{fn.__name__}", config=config, num_warps=num_warps, num_stages=num_stages,
                      registers=registers, spill_bytes=spills, shared_bytes=kernel.metadata.shared,
                      wgmma=ptx.count("wgmma.mma_async"), mma_sync=ptx.count("mma.sync"), compile_s=round(seconds, 2))


def compile_stats(fn: JITFunction, signature: dict, constexprs: dict, *, num_warps: int, num_stages: int,
                  arch: int = 90, attrs: dict | None = None) -> CubinStats:
    """Compile `fn` for sm_`arch` from an explicit signature (and specialisation `attrs`) and measure it."""
    start = time.perf_counter()
    kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
                            target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    return _measure(fn, kernel, constexprs, num_warps=num_warps, num_stages=num_stages, arch=arch,
                    seconds=time.perf_counter() - start)


def launch_specialisation(fn: JITFunction, args: tuple, kwargs: dict, arch: int = 90):
    """(signature, constexprs by path, constexprs by name, attrs, options) exactly as
    `fn[grid](*args, **kwargs)` would compile them on an sm_`arch` GPU: Triton's own binder, so
    integers equal to 1 become constexprs, 16-divisible integers and 16-byte-aligned pointers get
    `tt.divisibility = 16`, and the kernel's `do_not_specialize` arguments are left alone, just
    as at a real launch."""
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    named = {fn.arg_names[path[0]]: value for path, value in constexprs.items() if len(path) == 1}
    return signature, constexprs, named, attrs, options


def compile_launch(fn: JITFunction, args: tuple, kwargs: dict, *, arch: int = 90) -> CubinStats:
    """Compile one launch of `fn` as a GPU would (`launch_specialisation`) and measure it."""
    signature, constexprs, named, attrs, options = launch_specialisation(fn, args, kwargs, arch)
    start = time.perf_counter()
    kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
                            target=GPUTarget("cuda", arch, 32), options=options.__dict__)
    return _measure(fn, kernel, named, num_warps=options.num_warps, num_stages=options.num_stages, arch=arch,
                    seconds=time.perf_counter() - start)


@contextmanager
def compiling_launches(record: list, *, arch: int = 90, max_configs: int | None = None):
    """Inside: launches compile for sm_`arch` instead of running; each compile's CubinStats is
    appended to `record` (a repeated launch is compiled once). `max_configs` caps how many of an
    autotuned launch's pruned configs compile (the first ones of its list)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compiling_launches needs TRITON_INTERPRET unset (the interpreter never compiles)")
    seen = set()

    def compile_once(fn, args, kwargs):
        signature, _, named, attrs, options = launch_specialisation(fn, args, kwargs, arch)
        key = (fn.__name__, str(signature), str(named), str(attrs), options.num_warps, options.num_stages)
        if key not in seen:
            seen.add(key)
            record.append(compile_launch(fn, args, kwargs, arch=arch))

    def plain(self, grid):
        def launch(*args, **kwargs):
            compile_once(self, args, kwargs)
        return launch

    def tuned(self, grid):
        def launch(*args, **kwargs):
            self.nargs = dict(zip(self.arg_names, args), **kwargs)  # what the pruner reads, as in Autotuner.run
            for config in self.prune_configs(kwargs)[:max_configs]:
                compile_once(self.fn, args, {**kwargs, **config.all_kwargs()})
        return launch

    from armour_kernels.triton import attention
    saved = JITFunction.__getitem__, Autotuner.__getitem__, attention.SHARED_MEMORY_BYTES
    JITFunction.__getitem__, Autotuner.__getitem__ = plain, tuned
    attention.SHARED_MEMORY_BYTES = SHARED_BYTES.get(arch, H100_SHARED_BYTES)  # the pruner's limit for this arch
    try:
        yield record
    finally:
        JITFunction.__getitem__, Autotuner.__getitem__, attention.SHARED_MEMORY_BYTES = saved


__all__ = ["CubinStats", "H100_SHARED_BYTES", "SHARED_BYTES", "compile_launch", "compile_stats", "compiling_launches",
           "launch_specialisation"]
