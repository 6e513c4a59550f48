"""torch.compile through the attention op: fullgraph tracing keeps the op (no graph break), AOT
autograd traces forward and backward with the fake implementations (through the C++ autograd of
the dispatcher op), inference graphs on the cpu backend call the C++ dispatcher op
armour_kernels::attention, and the LeViT index check still runs inside a compiled graph."""
import pytest
import torch

from armour_kernels import attention
from armour_kernels.backend import cpu_has_op
from helpers import assert_close, backend_params, device_for


@pytest.mark.parametrize("backend", backend_params(["triton", "cpu"]))
def test_torch_compile_fullgraph_keeps_the_custom_op(backend):
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    def step(x, table, index):
        return attention(x[:, :, 0], x[:, :, 1], value="q+k", bias=table, bias_index=index, backend=backend).sum()

    device = device_for(backend)
    x = torch.randn(1, 9, 2, 2, 16, device=device, requires_grad=True)
    table = torch.randn(2, 5, device=device, requires_grad=True)
    index = torch.randint(0, 5, (9, 9), device=device)
    compiled = torch.compile(step, fullgraph=True, backend=record)
    loss = compiled(x, table, index)
    # The dispatcher op on CPU and CUDA; the Triton interpreter's own op for triton on CPU tensors.
    op = "armour_kernels.triton_attention" if device.type == "cpu" and backend == "triton" else "armour_kernels.attention"
    assert any(op in g for g in graphs), graphs
    grads = torch.autograd.grad(loss, (x, table))
    expected = torch.autograd.grad(step(x, table, index), (x, table))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    explanation = torch._dynamo.explain(step)(x, table, index)
    assert explanation.graph_break_count == 0


@pytest.mark.parametrize("backend", backend_params(["triton", "cpu"]))
def test_torch_compile_aot_autograd_through_the_op(backend):
    """AOT autograd traces forward and backward with the fake implementations (inductor would
    only add C++ compile time here); the reference path compiles alongside."""
    def step(q, k):
        return (attention(q, k, value="q", backend=backend) + attention(q, k, value="q", backend="reference")).sum()

    q, k = torch.randn(2, 1, 7, 2, 16, device=device_for(backend)).unbind(0)
    q.requires_grad_()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(q, k)
    torch.testing.assert_close(got, step(q, k), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(got, q)[0], torch.autograd.grad(step(q, k), q)[0],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", backend_params(["triton", "cpu", "reference"]))
def test_table_index_out_of_range_is_refused_under_torch_compile(backend):
    table, q = torch.randn(2, 10), torch.randn(1, 4, 2, 8)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def run(q, index):
        return attention(q, q, q, bias=table, bias_index=index, backend=backend)

    run(q, torch.randint(0, 10, (4, 4)))
    for bad in (10 ** 6, -5):
        index = torch.randint(0, 10, (4, 4))
        index[0, 0] = bad
        with pytest.raises(Exception, match="outside the table"):
            run(q, index)


@pytest.mark.cpu_kernels
@pytest.mark.skipif(not cpu_has_op("attention"), reason="needs the C++ extension (CPU kernels)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("value, bias_kind, mask_diagonal", [("v", "dense", False), ("q", None, True),
                                                             ("q+v", "table", False), ("k", "dense16", False)])
def test_inference_graph_calls_the_cpp_op(dtype, value, bias_kind, mask_diagonal):
    """No gradient wanted on the cpu backend: the compiled graph calls armour_kernels::attention
    (a C++ kernel behind the dispatcher, no Python on the call), and it matches the reference."""
    torch._dynamo.reset()  # `run` is one code object across the parameters: stay under the recompile limit
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    q, k, v = (torch.randn(2, 13, 3, 16, dtype=torch.float64).to(dtype) for _ in range(3))
    bias, index = None, None
    if bias_kind == "table":
        bias, index = torch.randn(3, 7), torch.randint(0, 7, (13, 13))
    elif bias_kind is not None:
        bias = torch.randn(3, 13, 13, dtype=torch.float16 if bias_kind == "dense16" else torch.float32)

    def run(q, k, v):
        return attention(q, k, v if "v" in value else None, value=value, bias=bias, bias_index=index,
                         mask_diagonal=mask_diagonal, backend="cpu")

    with torch.no_grad():
        got = torch.compile(run, fullgraph=True, backend=record)(q, k, v)
        expected = attention(q.double(), k.double(), v.double() if "v" in value else None, value=value,
                             bias=None if bias is None else bias.double(), bias_index=index,
                             mask_diagonal=mask_diagonal, backend="reference")
    assert any("armour_kernels.attention.default" in g for g in graphs), graphs
    assert not any("checked_index" in g for g in graphs), graphs  # the C++ kernel checks the index range
    assert got.dtype == dtype
    assert_close(got, expected, dtype)
