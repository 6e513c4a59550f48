"""armour_kernels.nn.NystromAttention on every backend: lucidrains' nystrom-attention 0.0.14 loads
into it strictly and gives the same output; the Armour variant has no value projection; the
original's options it does not implement are refused."""
import pytest
import torch

from armour_kernels.nn.nystrom import NystromAttention
from helpers import assert_close, backend_params, device_for

OP = "nystrom_attention"


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_module_matches_nystrom_attention(backend):
    from nystrom_attention import NystromAttention as Original
    torch.manual_seed(0)
    device = device_for(backend)
    original = Original(dim=32, dim_head=16, heads=2, num_landmarks=8).to(device)
    ours = NystromAttention(dim=32, dim_head=16, heads=2, num_landmarks=8, backend=backend).to(device)
    ours.load_state_dict(original.state_dict())
    x = torch.randn(2, 37, 32, device=device)
    assert_close(ours(x), original(x), torch.float32)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_armour_module_has_no_value_projection(backend):
    module = NystromAttention(dim=32, dim_head=16, heads=2, num_landmarks=4, residual_conv_kernel=5, value="q",
                              mode="clean", backend=backend).to(device_for(backend))
    assert module.to_qkv.weight.shape == (2 * 32, 32)
    x = torch.randn(1, 13, 32, device=device_for(backend), requires_grad=True)
    module(x).sum().backward()
    assert module.res_conv.weight.grad is not None and torch.isfinite(x.grad).all()


def test_module_unsupported_options():
    module = NystromAttention(dim=32, dim_head=16, heads=2, num_landmarks=4, backend="reference")
    with pytest.raises(NotImplementedError):
        module(torch.randn(1, 8, 32), mask=torch.ones(1, 8, dtype=torch.bool))
    with pytest.raises(NotImplementedError):
        module(torch.randn(1, 8, 32), return_attn=True)
