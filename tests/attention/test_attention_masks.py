"""Attention masks on the fused DeiT attention: attn_mask / is_causal as timm's `Attention` (SDPA) takes them.

A boolean mask (True = take part), an additive float mask (with its gradient), is_causal, and both
together, broadcast as SDPA broadcasts them, on every backend, against timm's own module running
PyTorch's scaled_dot_product_attention in float64 — forward and every gradient. A fully masked
query row gives 0, as SDPA gives it in this torch.
"""
import copy

import pytest
import torch
import torch.nn as nn
from timm.layers.attention import Attention as TimmAttention

import armour_kernels
from helpers import assert_close, backend_params

B, N, DIM, HEADS = 2, 7, 32, 2


def _modules(backend):
    torch.manual_seed(0)
    original = TimmAttention(DIM, num_heads=HEADS, qkv_bias=True)
    assert original.fused_attn  # the reference runs F.scaled_dot_product_attention
    reference = copy.deepcopy(original).double()
    fused = armour_kernels.patch(nn.Sequential(copy.deepcopy(original)), backend=backend)[0]
    assert type(fused).__name__ == "FusedDeiTAttention"
    return fused, reference


def _key_padding(shape):
    mask = torch.rand(shape) > 0.3
    mask[..., 0] = True  # every row keeps a key
    return mask


def _run(module, x, mask, is_causal, dtype):
    x = x.detach().to(dtype).requires_grad_()
    if mask is not None and mask.is_floating_point():
        mask = mask.detach().to(dtype).requires_grad_()
    out = module(x, attn_mask=mask, is_causal=is_causal)
    (out * torch.linspace(-1, 1, out.shape[-1], dtype=dtype)).sum().backward()
    grads = {"x": x.grad, **{name: p.grad for name, p in module.named_parameters()}}
    if mask is not None and mask.requires_grad:
        grads["attn_mask"] = mask.grad
    return out, grads


MASKS = {
    "bool (N, N)": lambda: _key_padding((N, N)),
    "bool (B, 1, 1, N) key padding": lambda: _key_padding((B, 1, 1, N)),
    "bool (B, H, N, N)": lambda: _key_padding((B, HEADS, N, N)),
    "float (H, N, N)": lambda: torch.randn(HEADS, N, N),
    "float (B, 1, N, N) with -inf": lambda: torch.randn(B, 1, N, N).masked_fill(~_key_padding((B, 1, N, N)),
                                                                               float("-inf")),
}


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("is_causal", [False, True], ids=["", "causal"])
@pytest.mark.parametrize("mask", list(MASKS) + [None])
def test_masks_match_sdpa(backend, mask, is_causal):
    if mask is None and not is_causal:
        pytest.skip("no mask: the plain model tests")
    fused, reference = _modules(backend)
    torch.manual_seed(1)
    x = torch.randn(B, N, DIM)
    attn_mask = MASKS[mask]() if mask else None
    ref_mask = attn_mask
    if attn_mask is not None and is_causal:  # SDPA's combination, spelled out
        causal = torch.ones(N, N, dtype=torch.bool).tril()
        ref_mask = attn_mask & causal if attn_mask.dtype == torch.bool else \
            attn_mask + torch.zeros(N, N).masked_fill(~causal, float("-inf"))
    out, grads = _run(fused, x, attn_mask, is_causal, torch.float32)
    expected, expected_grads = _run(reference, x, ref_mask, is_causal and attn_mask is None, torch.float64)
    assert_close(out, expected, msg="output")
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        if name == "attn_mask" and ref_mask is not attn_mask:
            continue  # the reference's mask is a function of ours; its gradient is checked without is_causal
        assert_close(grads[name], grad, dtype=torch.float32, msg=name)


@pytest.mark.parametrize("backend", backend_params())
def test_fully_masked_row_is_zero_like_sdpa(backend):
    fused, reference = _modules(backend)
    mask = torch.ones(B, 1, N, N, dtype=torch.bool)
    mask[0, 0, 3] = False  # query 3 of the first image sees no key
    x = torch.randn(B, N, DIM)
    out, grads = _run(fused, x, mask, False, torch.float32)
    expected, expected_grads = _run(reference, x, mask, False, torch.float64)
    assert torch.isfinite(expected).all()  # SDPA: no NaN either
    assert_close(out, expected, msg="output")
    torch.testing.assert_close(out[0, 3], fused.proj.bias.detach())  # attention output 0: only proj's bias
    for name, grad in expected_grads.items():
        assert_close(grads[name], grad, dtype=torch.float32, msg=name)


def test_scripted_module_takes_masks():
    fused, _ = _modules("auto")
    fused.eval()
    scripted = torch.jit.script(fused)
    x, mask = torch.randn(B, N, DIM), _key_padding((B, 1, 1, N))
    with torch.no_grad():
        for kwargs in ({}, {"attn_mask": mask}, {"is_causal": True}, {"attn_mask": mask.float().log()}):
            torch.testing.assert_close(scripted(x, **kwargs), fused(x, **kwargs), msg=str(kwargs))


@pytest.mark.parametrize("mask, error, match", [
    (torch.ones(N, N, dtype=torch.int64), TypeError, "bool .* or the compute dtype"),
    (torch.zeros(N, N, dtype=torch.float64), TypeError, "got torch.float64"),
    (torch.ones(N, N + 1, dtype=torch.bool), ValueError, r"does not broadcast to \(B, H, Nq, Nk\)"),
    (torch.ones(3, N, N, dtype=torch.bool), ValueError, "does not broadcast"),
    (torch.ones(1, B, HEADS, N, N, dtype=torch.bool), ValueError, "does not broadcast"),
], ids=["int", "float64", "columns", "heads", "5-d"])
def test_bad_masks_are_refused(mask, error, match):
    fused, _ = _modules("reference")
    with pytest.raises(error, match="FusedDeiTAttention: attn_mask .*" + match):
        fused(torch.randn(B, N, DIM), attn_mask=mask)
