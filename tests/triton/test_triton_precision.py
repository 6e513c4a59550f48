"""The precision of the Triton kernels' fp32 dot products follows torch.backends.cuda.matmul.allow_tf32
(attention: tf32 or ieee; Nyström / Performer: tf32x3 where the products feed exp or the m×m pinv)."""
import pytest
import torch

from armour_kernels.triton import attention as ta
from helpers import HAS_CUDA, record_launches

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def allow_tf32(request):
    """torch.backends.cuda.matmul.allow_tf32 set to the test's parameter, restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = request.param
    yield request.param
    torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("allow_tf32", [False, True], indirect=True)
def test_fp32_attention_follows_allow_tf32(monkeypatch, allow_tf32):
    allow = allow_tf32
    assert ta.dot_precision(torch.float32) == ("tf32" if allow else "ieee")
    assert ta.dot_precision(torch.float16) is None and ta.dot_precision(torch.bfloat16) is None
    seen = record_launches(monkeypatch)
    q, k, v = (torch.randn(1, 5, 1, 16, device=DEVICE) for _ in range(3))
    ta.attention_forward(q, k, v, None, None, value="v", scale=None, mask_diagonal=False)
    assert seen[0][1]["PREC"] == ("tf32" if allow else "ieee")


@pytest.mark.parametrize("allow_tf32", [False, True], indirect=True)
def test_linear_attention_precisions(allow_tf32):
    from armour_kernels.triton._precision import precisions
    allow = allow_tf32
    fp32 = precisions(torch.float32)
    assert fp32 == dict(PREC_EXACT="tf32x3", PREC_VALUE="tf32" if allow else "tf32x3")
    for dtype in (torch.float16, torch.bfloat16):  # m×m and exp-feeding products stay ≈ fp32 whatever the input
        assert precisions(dtype) == dict(PREC_EXACT="tf32x3", PREC_VALUE="tf32")
