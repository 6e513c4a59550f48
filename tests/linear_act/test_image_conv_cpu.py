"""The CPU image convolution (armour_kernels::image_conv, docs/image_conv.md) against F.conv2d + the
activation in float64: every dispatch path this CPU supports, every activation, odd shapes, strides
and paddings, output channels that are not a multiple of the vector width, non-contiguous images,
NaN / inf, bad arguments, the inference-only refusal, torch.compile, and the LeViT stem (conv_chain)
that uses it for its first layer (.ci/sanitize runs this file)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from armour_kernels import cpu
from armour_kernels.constants import ACTIVATIONS
from armour_kernels.ops.linear_act import TORCH_ACTIVATIONS, conv_chain, image_conv

from helpers import assert_close, assert_same_nans_and_close

pytestmark = pytest.mark.skipif(not cpu.has_op("image_conv"), reason="the C++ extension is not built")

DTYPES = (torch.float32, torch.bfloat16)


def make(B, C, H, W, cout, k, dtype, *, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g).to(dtype)
    w = (torch.randn(cout, C, *k, generator=g) / (C * k[0] * k[1]) ** 0.5).to(dtype)
    b = torch.randn(cout, generator=g).to(dtype) if bias else None
    return x, w, b


def expected(x, w, b, stride, padding, act):
    """The definition, in float64."""
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding)
    return TORCH_ACTIVATIONS[act](y)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activations(isa, dtype, act):
    x, w, b = make(2, 3, 30, 22, 16, (3, 3), dtype)
    y = image_conv(x, w, b, 2, 1, act)
    assert y.dtype == dtype and y.shape == (2, 16, 15, 11)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, expected(x, w, b, 2, 1, act), dtype, msg=f"{isa} {act}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,C,H,W,cout,k,stride,padding", [
    (1, 3, 224, 224, 16, (3, 3), 2, 1),   # LeViT's first stem convolution
    (0, 3, 8, 8, 16, (3, 3), 2, 1),       # no images
    (1, 1, 1, 1, 1, (1, 1), 1, 0),        # one pixel, one channel
    (3, 4, 9, 13, 24, (3, 3), 1, 1),      # stride 1, 24 channels (a partial vector)
    (2, 2, 17, 11, 33, (2, 5), 3, 2),     # run-time stride, odd kernel, 33 channels
    (1, 3, 5, 5, 8, (5, 5), 2, 0),        # the kernel covers the image: one output pixel
    (2, 3, 7, 40, 16, (3, 3), 2, 3),      # padding wider than a stride: all-zero border rows
])
@pytest.mark.parametrize("bias", (True, False))
def test_shapes(isa, dtype, B, C, H, W, cout, k, stride, padding, bias):
    x, w, b = make(B, C, H, W, cout, k, dtype, bias=bias, seed=H + W + cout)
    y = image_conv(x, w, b, stride, padding, "hardswish")
    want = expected(x, w, b, stride, padding, "hardswish")
    assert y.shape == want.shape
    if y.numel():
        assert_close(y, want, dtype, msg=f"{isa} {tuple(x.shape)} -> {cout}")


def test_strided_images(isa):
    """Any input strides: channels-last, a crop, every other column; pairs (s, s) for stride / padding."""
    x, w, b = make(2, 3, 40, 64, 16, (3, 3), torch.float32)
    for view in (x.contiguous(memory_format=torch.channels_last), x[:, :, 3:37, 5:50], x[..., ::2]):
        y = image_conv(view, w, b, (2, 2), (1, 1), "relu")
        assert_close(y, expected(view, w, b, 2, 1, "relu"), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ("none", "relu", "hardswish"))
def test_nan_and_inf(isa, dtype, act):
    """NaN / ±inf in the image reach exactly the outputs whose window holds them, as in F.conv2d."""
    x, w, b = make(1, 3, 20, 20, 16, (3, 3), dtype)
    x[0, 1, 4, 5] = float("nan")
    x[0, 0, 12, 12] = float("inf")
    x[0, 2, 16, 3] = float("-inf")
    y = image_conv(x, w, b, 2, 1, act)
    assert_same_nans_and_close(y, expected(x, w, b, 2, 1, act), dtype, f"{isa} {act}")


@pytest.mark.parametrize("act", ["none", "hardswish"])
def test_float32_image_with_bf16_weights_rounds_as_it_reads(isa, act):
    """A float32 image with bf16 weights is a bf16 convolution of the image rounded to bf16: bit for bit
    image_conv(x.to(bfloat16)) (the graph runner drops a served model's input cast this way), strided too."""
    x, w, b = make(2, 3, 30, 23, 16, (3, 3), torch.float32)
    w, b = w.bfloat16(), b.bfloat16()
    code = 1 if act == "hardswish" else 0
    for image in (x, x[:, :, :, ::2]):
        y = torch.ops.armour_kernels.image_conv(image, w, b, 2, 1, code)
        assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y, torch.ops.armour_kernels.image_conv(image.bfloat16(), w, b, 2, 1, code)), isa


def test_bad_arguments():
    x, w, b = make(1, 3, 16, 16, 16, (3, 3), torch.float32)
    with pytest.raises(RuntimeError, match="x must be"):
        image_conv(x[0], w, b, 2, 1)
    with pytest.raises(RuntimeError, match="weight must be"):
        image_conv(x, w[:, :2], b, 2, 1)
    with pytest.raises(RuntimeError, match="bias must be"):
        image_conv(x, w, b[:8], 2, 1)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        image_conv(x.double(), w, b, 2, 1)
    with pytest.raises(TypeError, match="weight must be"):  # a bf16 image takes bf16 weights only
        torch.ops.armour_kernels.image_conv(x.bfloat16(), w, None, 2, 1, 0)
    with pytest.raises(TypeError, match="bias must be"):
        torch.ops.armour_kernels.image_conv(x, w.bfloat16(), b, 2, 1, 0)
    with pytest.raises(RuntimeError, match="stride must be"):
        image_conv(x, w, b, 0, 1)
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        image_conv(x[:, :, :1, :1], w, b, 1, 0)
    with pytest.raises(ValueError, match="square pair"):
        image_conv(x, w, b, (2, 1), 1)
    with pytest.raises(ValueError, match="act must be"):
        image_conv(x, w, b, 2, 1, "tanh")
    with pytest.raises(RuntimeError, match="unknown activation"):
        torch.ops.armour_kernels.image_conv(x, w, b, 2, 1, 99)


def test_inference_only():
    x, w, b = make(1, 3, 16, 16, 16, (3, 3), torch.float32)
    with pytest.raises(RuntimeError, match="inference-only"):
        image_conv(x, w.requires_grad_(), b, 2, 1)
    with torch.no_grad():
        assert_close(image_conv(x, w, b, 2, 1), expected(x, w, b, 2, 1, "none"), torch.float32)


def test_compiles():
    x, w, b = make(2, 3, 32, 32, 16, (3, 3), torch.float32)
    fn = torch.compile(lambda t: image_conv(t, w, b, 2, 1, "hardswish"), fullgraph=True, backend="inductor")
    with torch.no_grad():
        y = fn(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, expected(x, w, b, 2, 1, "hardswish"), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", (1, 9))  # 9 images: more than one of conv_chain's image chunks
def test_stem_chain(dtype, batch):
    """conv_chain (the fused LeViT stem): image_conv, then oneDNN; the same as F.conv2d layer by layer."""
    g = torch.Generator().manual_seed(3)
    layers, cin = [], 3
    for cout, act in ((16, "hardswish"), (32, "hardswish"), (64, "none")):
        w = torch.randn(cout, cin, 3, 3, generator=g) / (9 * cin) ** 0.5
        layers.append((w, torch.randn(cout, generator=g), (2, 2), (1, 1), act))
        cin = cout
    x = torch.randn(batch, 3, 128, 128, generator=g)
    want = x.double()
    for w, b, stride, padding, act in layers:
        want = TORCH_ACTIVATIONS[act](F.conv2d(want, w.double(), b.double(), stride, padding))
    with torch.no_grad():
        y = conv_chain(x.to(dtype), [(w.to(dtype), b.to(dtype), s, p, a) for w, b, s, p, a in layers], backend="cpu")
    assert y.dtype == dtype
    assert_close(y, want, dtype, scale=4.0)


@pytest.mark.parametrize("compiled", ("eager", "static", "dynamic"))
def test_stem_chain_in_image_chunks(monkeypatch, compiled):
    """A static batch larger than a chunk runs chunk by chunk, eagerly and compiled (the large
    intermediates stay small), with the same result; a batch-dynamic compile (chunk_batches=False)
    runs it whole, one graph for every batch."""
    from armour_kernels.cpu import linear_act as cpu_linear_act
    monkeypatch.setattr(cpu_linear_act, "CHUNK_BYTES", 2 * 16 * 16 * 16 * 4)  # 2 images of 32×32 per chunk
    g = torch.Generator().manual_seed(4)
    layers = [(torch.randn(16, 3, 3, 3, generator=g) / 5, torch.randn(16, generator=g), (2, 2), (1, 1), "hardswish"),
              (torch.randn(8, 16, 3, 3, generator=g) / 12, torch.randn(8, generator=g), (2, 2), (1, 1), "none")]
    x = torch.randn(5, 3, 32, 32, generator=g)
    want = x.double()
    for w, b, stride, padding, act in layers:
        want = TORCH_ACTIVATIONS[act](F.conv2d(want, w.double(), b.double(), stride, padding))
    fn = (lambda t: conv_chain(t, layers, backend="cpu", chunk_batches=compiled != "dynamic"))
    if compiled != "eager":
        torch._dynamo.reset()
        fn = torch.compile(fn, fullgraph=True, dynamic=compiled == "dynamic")
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad():
        fn(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            y = fn(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, want, torch.float32)
    calls = sum(e.count for e in prof.key_averages() if e.key == "armour_kernels::image_conv")
    assert calls == (1 if compiled == "dynamic" else 3), calls  # 5 images, 2 per chunk
    if compiled == "dynamic":
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
            assert fn(torch.randn(7, 3, 32, 32)).shape == (7, 8, 8, 8)
