"""Nyström and Performer on CPU: the fused C++ kernels (armour_kernels._C), forward and backward,
through the public ops, against python_ref's autograd in float64; splits of one sequence over
threads; strides; bf16 / fp16 inputs; every ISA path; input errors; backend="auto" on CPU tensors;
and that the CPU launchers never need python_ref."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import armour_kernels
from armour_kernels import cpu
from armour_kernels.backend import select
from python_ref.nystrom import nystrom_attention as nystrom_reference
from python_ref.performer import gaussian_orthogonal_random_matrix
from python_ref.performer import performer_attention as performer_reference
from tests.conftest import assert_close

pytestmark = pytest.mark.skipif(not (cpu.has_op("nystrom_attention") and cpu.has_op("performer_attention")),
                                reason="armour_kernels._C not built with the Nyström / Performer kernels")


def _qkv(batch, n, heads, d, value, dtype=torch.float32, nk=None):
    """q, k, v as strided views of packed projections (B, N, 3, H, D), as the layers make them."""
    nk = n if nk is None else nk
    qkv = torch.randn(batch, max(n, nk), 3, heads, d, dtype=torch.float64)
    q, k, v = qkv[:, :n, 0], qkv[:, :nk, 1], qkv[:, :nk, 2]
    return q.to(dtype), k.to(dtype), (v.to(dtype) if value == "v" else None)


def _grad_check(op, reference, tensors, dtype, **options):
    """Forward and gradients of op(*tensors) vs reference on float64 copies (layout (B, H, N, D))."""
    ours = [None if t is None else t.detach().requires_grad_() for t in tensors]
    refs = [None if t is None else t.detach().double().requires_grad_() for t in tensors]
    out = op(*ours, **options)
    expected = reference(*refs)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out, expected, dtype, msg="out")
    dout = torch.randn_like(expected)
    out.backward(dout.to(dtype))
    expected.backward(dout)
    for i, (mine, ref) in enumerate(zip(ours, refs)):
        if mine is not None:
            assert mine.grad.dtype == mine.dtype and mine.grad.shape == mine.shape
            assert_close(mine.grad, ref.grad, dtype, msg=f"grad {i}")


def _t(x):
    return None if x is None else x.transpose(1, 2)


def _performer_pair(proj, kernel, mode, value):
    """(the CPU op, the float64 python_ref definition) of one Performer configuration, both in (B, N, H, D)."""
    def op(q, k, v):
        return armour_kernels.performer_attention(q, k, v, projection=proj, kernel=kernel, mode=mode, value=value,
                                                  backend="cpu")

    def ref(q, k, v):
        return performer_reference(_t(q), _t(k), _t(v), projection=proj.double(), kernel=kernel, mode=mode,
                                   value=value).transpose(1, 2)
    return op, ref


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("mode", ["clean", "seed"])
@pytest.mark.parametrize("batch, value, n, nk, m", [
    (2, "v", 37, 29, 24), (1, "q", 50, 50, 20), (2, "v", 1, 3, 7),
    (1, "v", 300, 270, 110),  # several blocks of tokens per (b, h), short last blocks, the paper's m
])
def test_performer_matches_reference(kernel, mode, batch, value, n, nk, m):
    """Forward and gradients of the fused kernels vs float64 autograd through python_ref (seed: the
    batch-wide key stabiliser is attached to autograd)."""
    q, k, v = _qkv(batch, n, 3, 16, value, nk=nk)
    proj = gaussian_orthogonal_random_matrix(m, 16)

    op, ref = _performer_pair(proj, kernel, mode, value)
    _grad_check(op, ref, (q, k, v), torch.float32)


def _nystrom_pair(m, mode, value):
    """(the CPU op, the float64 python_ref definition) of one Nyström configuration, both in (B, N, H, D)."""
    def op(q, k, v, conv_weight):
        return armour_kernels.nystrom_attention(q, k, v, num_landmarks=m, mode=mode, value=value,
                                                conv_weight=conv_weight, backend="cpu")

    def ref(q, k, v, conv_weight):
        return nystrom_reference(_t(q), _t(k), _t(v), num_landmarks=m, mode=mode, value=value,
                                 conv_weight=conv_weight).transpose(1, 2)
    return op, ref


def _conv(heads, taps, dtype=torch.float32):
    return (torch.randn(heads, 1, taps, 1, dtype=torch.float64) * 0.2).to(dtype) if taps else None


@pytest.mark.parametrize("mode", ["clean", "seed"])
@pytest.mark.parametrize("value", ["v", "q"])
@pytest.mark.parametrize("batch, n, m, taps", [
    (1, 77, 8, 33),    # B = 1, n odd and not divisible by m: 3 zero rows padded in front
    (2, 64, 8, 33),    # divisible
    (2, 5, 8, 0),      # n < m: most landmarks are padding only; no residual conv
    (3, 19, 4, 5),
    (2, 300, 16, 9),   # several blocks of tokens per (b, h), a short last block, 4 padded rows
])
def test_nystrom_fused_backward_matches_reference(mode, value, batch, n, m, taps):
    """Forward and every gradient (q, k, v, conv weight) of the fused kernels vs float64 autograd
    through python_ref: both pinv scalings, both value sources, with and without the conv."""
    q, k, v = _qkv(batch, n, 3, 16, value)
    op, ref = _nystrom_pair(m, mode, value)
    _grad_check(op, ref, (q, k, v, _conv(3, taps)), torch.float32)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_every_isa_path(isa):
    if isa not in cpu.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    q, k, v = _qkv(2, 45, 2, 32, "v")
    proj = gaussian_orthogonal_random_matrix(40, 32)
    conv = torch.randn(2, 1, 33, 1) * 0.2
    with cpu.use_isa(isa):
        perf = armour_kernels.performer_attention(q, k, v, projection=proj, mode="seed", backend="cpu")
        nys = armour_kernels.nystrom_attention(q, k, v, num_landmarks=16, mode="seed", conv_weight=conv,
                                               backend="cpu")
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    assert_close(perf, performer_reference(qd, kd, vd, projection=proj.double(), mode="seed").transpose(1, 2),
                 torch.float32)
    assert_close(nys, nystrom_reference(qd, kd, vd, num_landmarks=16, mode="seed",
                                        conv_weight=conv.double()).transpose(1, 2), torch.float32)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("kernel, mode, value", [("softmax", "clean", "q"), ("softmax", "seed", "v"),
                                                 ("relu", "clean", "v")])
def test_performer_fused_backward_every_isa(isa, kernel, mode, value):
    """The fused C++ backward on each ISA path (seed: the attached global stabiliser), vs float64 autograd."""
    if isa not in cpu.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    q, k, v = _qkv(2, 41, 2, 32, value)
    proj = gaussian_orthogonal_random_matrix(40, 32)

    op, ref = _performer_pair(proj, kernel, mode, value)
    with cpu.use_isa(isa):
        _grad_check(op, ref, (q, k, v), torch.float32)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("mode, value", [("seed", "v"), ("clean", "q")])
def test_nystrom_fused_backward_every_isa(isa, mode, value):
    if isa not in cpu.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    q, k, v = _qkv(2, 45, 2, 32, value)
    op, ref = _nystrom_pair(16, mode, value)
    with cpu.use_isa(isa):
        _grad_check(op, ref, (q, k, v, _conv(2, 33)), torch.float32)


@pytest.fixture
def many_threads():
    """8 threads for one (b, h): the kernels split each sequence over tasks and merge the partials."""
    threads = torch.get_num_threads()
    torch.set_num_threads(8)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["clean", "seed"])
def test_one_sequence_split_over_threads(many_threads, mode):
    """B = H = 1 and more threads than (b, h) pairs: the token splits' partials (online softmaxes of
    A3·v and of Performer's key stabiliser, gradient sums) merge into the one-task result."""
    op, ref = _nystrom_pair(16, mode, "v")
    _grad_check(op, ref, (*_qkv(1, 700, 1, 16, "v"), _conv(1, 33)), torch.float32)
    q, k, v = _qkv(1, 700, 1, 16, "v", nk=650)
    for kernel in ("softmax", "relu"):
        op, ref = _performer_pair(gaussian_orthogonal_random_matrix(40, 16), kernel, mode, "v")
        _grad_check(op, ref, (q, k, v), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_compute_in_float32(dtype):
    """bf16 / fp16 in, the same dtype out (and gradients), within that dtype's tolerance."""
    q, k, v = _qkv(2, 33, 2, 16, "v", dtype=dtype)
    op, ref = _performer_pair(gaussian_orthogonal_random_matrix(20, 16), "softmax", "seed", "v")
    _grad_check(op, ref, (q, k, v), dtype)
    op, ref = _nystrom_pair(8, "clean", "v")
    _grad_check(op, ref, (q, k, v, _conv(2, 5, dtype)), dtype)


def test_large_scores_stay_finite():
    """Scores of several hundred overflow a naive exp in fp32: every softmax subtracts its maximum."""
    q, k, v = _qkv(1, 40, 2, 16, "v")
    q, k = q * 12, k * 12
    op, ref = _nystrom_pair(8, "seed", "v")
    _grad_check(op, ref, (q, k, v, None), torch.float32)
    op, ref = _performer_pair(gaussian_orthogonal_random_matrix(20, 16), "softmax", "clean", "v")
    _grad_check(op, ref, (q / 6, k / 6, v), torch.float32)


def test_auto_backend_picks_the_cpu_kernels():
    for op in ("nystrom_attention", "performer_attention"):
        assert select(op, torch.device("cpu"), "auto") == "cpu"
    q, k, v = _qkv(1, 20, 2, 16, "v")
    out = armour_kernels.nystrom_attention(q, k, v, num_landmarks=4)
    expected = armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, backend="reference")
    assert_close(out, expected, torch.float32)


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(1, 20, 2, 16, "v")
    proj = gaussian_orthogonal_random_matrix(20, 16)
    with pytest.raises(ValueError, match="projection"):
        armour_kernels.performer_attention(q, k, v, projection=proj[:, :8], backend="cpu")
    with pytest.raises(ValueError, match="kernel"):
        armour_kernels.performer_attention(q, k, v, projection=proj, kernel="gelu", backend="cpu")
    with pytest.raises(ValueError, match="num_landmarks"):
        armour_kernels.nystrom_attention(q, k, v, num_landmarks=0, backend="cpu")
    with pytest.raises(ValueError, match="conv_weight"):
        armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, conv_weight=torch.randn(2, 1, 4, 1),
                                         backend="cpu")
    # the extension's own checks (reached by direct callers)
    with pytest.raises(RuntimeError, match="float32"):
        cpu._C.performer_attention(q.double(), k.double(), v.double(), proj, "softmax", "clean")
    with pytest.raises(RuntimeError, match="must agree"):
        cpu._C.nystrom_attention(q, k[..., :8], v, None, 4, 6, "clean")
    with pytest.raises(RuntimeError, match="mode"):
        cpu._C.nystrom_attention(q, k, v, None, 4, 6, "dirty")


@pytest.mark.parametrize("value", ["v", "q"])
def test_any_strides_and_a_broadcast_dout(value):
    """Feature stride ≠ 1 (a (B, N, D, H) buffer seen as (B, N, H, D)): the kernels copy such rows
    instead of reading them in place; dout of out.sum() is a stride-0 broadcast."""
    q, k, v = (torch.randn(2, 150, 16, 3, dtype=torch.float64).transpose(2, 3).float() for _ in range(3))
    assert q.stride(3) != 1
    v = v if value == "v" else None
    tensors = (q, k, v)
    for op, ref, extra in ((*_nystrom_pair(5, "clean", value), (_conv(3, 9),)),
                           (*_performer_pair(gaussian_orthogonal_random_matrix(20, 16), "softmax", "seed", value), ())):
        _grad_check(op, ref, tensors + extra, torch.float32)
        ours = [None if t is None else t.detach().requires_grad_() for t in tensors + extra]
        refs = [None if t is None else t.detach().double().requires_grad_() for t in tensors + extra]
        op(*ours).sum().backward()
        ref(*refs).sum().backward()
        for mine, expected in zip(ours, refs):
            if mine is not None:
                assert_close(mine.grad, expected.grad, torch.float32)


def test_torch_compile_forward_and_backward():
    """The CPU launchers honour the ops' fake kernels (shapes, contiguous gradients) under torch.compile."""
    q, k, v = (torch.randn(2, 20, 2, 16, requires_grad=True) for _ in range(3))
    proj = gaussian_orthogonal_random_matrix(20, 16)

    def loss(q, k, v):
        return (armour_kernels.performer_attention(q, k, v, projection=proj, backend="cpu").sum()
                + armour_kernels.nystrom_attention(q, k, v, num_landmarks=4, mode="seed", backend="cpu").sum())

    torch.compile(loss, fullgraph=True)(q, k, v).backward()
    compiled = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    loss(q, k, v).backward()
    for mine, eager in zip(compiled, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(mine, eager)


def test_cpu_launchers_never_import_python_ref():
    """python_ref is the test oracle, not a run-time dependency: no module of armour_kernels/cpu
    imports it, and forward + backward of both ops run with python_ref made unimportable."""
    for path in (Path(cpu.__file__).parent).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "python_ref" for n in names), f"{path.name} imports python_ref"
    script = """
import sys, torch
import armour_kernels
from armour_kernels.cpu import nystrom, performer
for name in [m for m in sys.modules if m == "python_ref" or m.startswith("python_ref.")]:
    del sys.modules[name]
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "python_ref":
            raise ImportError("python_ref imported at run time by " + name)
sys.meta_path.insert(0, Block())
q, k, v = (torch.randn(1, 21, 2, 16, requires_grad=True) for _ in range(3))
conv = torch.randn(2, 1, 5, 1, requires_grad=True)
proj = torch.randn(12, 16)
for mode in ("clean", "seed"):
    for value in ("v", "q"):
        vv = v if value == "v" else None
        armour_kernels.nystrom_attention(q, k, vv, num_landmarks=4, mode=mode, value=value, conv_weight=conv,
                                         backend="cpu").sum().backward()
        for kernel in ("softmax", "relu"):
            armour_kernels.performer_attention(q, k, vv, projection=proj, kernel=kernel, mode=mode, value=value,
                                               backend="cpu").sum().backward()
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_linear_benchmark_smoke(tmp_path, monkeypatch):
    """`armour-bench linear_attention` runs end to end on CPU (one tiny shape, one round, two thread counts)."""
    import argparse
    import json

    from armour_kernels.benchmarks import linear_attention
    monkeypatch.setattr(linear_attention, "sweep", lambda *args: [("seq", 1, 40)])
    parser = argparse.ArgumentParser()
    linear_attention.add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--repeats", "1", "--threads", "1,2", "--landmarks", "8",
                              "--out", str(tmp_path)])
    assert linear_attention.run(args) == 0
    report = json.loads((tmp_path / "linear_attention-cpu-fp32.json").read_text())
    rows = report["rows"]
    assert {(r["family"], r["impl"]) for r in rows} == {(f, i) for f in ("nystrom", "performer")
                                                       for i in ("armour_kernels", "python_ref", "sdpa")}
    assert all(r["status"] == "ok" and r["fwd_ms"] > 0 for r in rows)
    ours = [r for r in rows if r["impl"] == "armour_kernels"]
    assert all(r["fwd_bwd_vs_python_ref"] > 0 and r["fwd_vs_sdpa"] > 0 for r in ours)
    assert {r["threads"] for r in rows} <= {1, 2} and report["targets"]
    assert "load_avg_1min_end" in report["environment"]
