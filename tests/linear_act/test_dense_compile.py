"""armour_kernels::dense under torch.compile (fullgraph) and torch.export: the op is called as it is."""
from __future__ import annotations

import pytest
import torch

from armour_kernels import cpu
from armour_kernels.ops.linear_act import dense, dense_pack
from dense_cases import expected, make
from helpers import assert_close

pytestmark = pytest.mark.skipif(not cpu.has_op("dense"), reason="the C++ extension is not built")


def test_compile_and_export():
    """Under torch.compile (freezing, fullgraph) and torch.export the op is called as it is."""
    x, w, b, r = make(12, 64, 64, torch.float32, residual=True)
    p = dense_pack(w)

    def f(x, r):
        return dense(x, p, b, 64, act="gelu", residual=r)

    want = expected(x, w, b, "gelu", False, r)
    with torch.no_grad():
        assert_close(torch.compile(f, fullgraph=True)(x, r), want, torch.float32)

    class M(torch.nn.Module):
        def forward(self, x, r):
            return f(x, r)

    ep = torch.export.export(M(), (x, r))
    assert "armour_kernels.dense" in str(ep.graph)
    assert_close(ep.module()(x, r), want, torch.float32)
