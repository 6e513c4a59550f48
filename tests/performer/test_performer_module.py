"""armour_kernels.nn.PerformerAttention on every backend: performer-pytorch's SelfAttention loads
into it strictly and gives the same output (softmax and generalised kernels); the Armour variant has
no value projection; the original's options it does not implement are refused."""
import pytest
import torch

from armour_kernels.nn.performer import PerformerAttention
from helpers import assert_close, backend_params, device_for

OP = "performer_attention"


@pytest.mark.parametrize("generalized", [False, True])
@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_module_matches_performer_pytorch(backend, generalized):
    from performer_pytorch import SelfAttention
    torch.manual_seed(0)
    device = device_for(backend)
    original = SelfAttention(dim=32, heads=2, dim_head=16, qkv_bias=True, generalized_attention=generalized).to(device)
    ours = PerformerAttention(dim=32, heads=2, dim_head=16, qkv_bias=True, generalized_attention=generalized,
                              backend=backend).to(device)
    ours.load_state_dict(original.state_dict())
    x = torch.randn(2, 37, 32, device=device)
    assert_close(ours(x), original(x), torch.float32)


@pytest.mark.parametrize("backend", backend_params(op=OP))
def test_armour_module_has_no_value_projection(backend):
    module = PerformerAttention(dim=32, heads=2, dim_head=16, value="q", backend=backend).to(device_for(backend))
    assert not hasattr(module, "to_v")
    x = torch.randn(1, 20, 32, device=device_for(backend), requires_grad=True)
    module(x).sum().backward()
    assert module.to_q.weight.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("option", [dict(causal=True), dict(local_heads=1), dict(no_projection=True),
                                    dict(generalized_attention=True, kernel_fn=torch.nn.GELU())])
def test_module_unsupported_options(option):
    with pytest.raises(NotImplementedError):
        PerformerAttention(dim=32, heads=2, dim_head=16, **option)
