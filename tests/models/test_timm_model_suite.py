"""timm's own model checks (its tests/test_models.py), run on the models `armour_kernels.patch` supports.

For DeiT-Ti, DeiT-S, DeiT-Ti distilled, ViT-Ti, LeViT-128S and LeViT-conv-128S (random weights,
patched): a forward (with gradient checkpointing), a training backward that reaches every
parameter, the default configuration's heads and names, forward_intermediates, the features_only
wrapper, torch.fx feature extraction forward and backward (timm's extractor and torchvision's, with
and without timm's leaf list), torch.jit.script, and torch.jit.script of the fx graph — each as
timm checks it, plus: the patched model computes what the unpatched one does, and the traced /
scripted graphs still call the fused modules and the attention op.

Input sizes are smaller than timm's where the model allows it (DeiT / ViT built for 64×64 images:
17 tokens); LeViT's attention biases fix it to 224×224. Like timm, fx + TorchScript leaves out the
distilled DeiT and LeViT (their forward branches on torch.jit.is_scripting(), which a traced graph
has lost).
"""
import copy
import math
import os
import subprocess
import sys

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import armour_kernels
from armour_kernels.nn import FX_LEAF_MODULES
from helpers import ROOT

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

MODELS = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_tiny_distilled_patch16_224",
          "vit_tiny_patch16_224", "levit_128s", "levit_conv_128s"]
FX_SCRIPT_MODELS = ["deit_tiny_patch16_224", "deit_small_patch16_224", "vit_tiny_patch16_224"]
SMALL_IMAGE = 64


def _image_size(name):
    return 224 if name.startswith("levit") else SMALL_IMAGE


def create(name, patched=True, **kwargs):
    """timm.create_model(name, pretrained=False, ...) at the test's image size, patched."""
    torch.manual_seed(0)
    if not name.startswith("levit"):
        kwargs.setdefault("img_size", SMALL_IMAGE)
    model = timm.create_model(name, pretrained=False, **kwargs)
    if patched:
        armour_kernels.patch(model)
        assert _fused_modules(model), "nothing was patched"
    return model


_PATCHED = {}


def patched(name):
    """The patched model in eval mode, created once for the checks that leave it as it is."""
    if name not in _PATCHED:
        _PATCHED[name] = create(name).eval()
    return _PATCHED[name]


def for_training(name):
    """A copy of the patched model with a 42-class head in training mode (timm: num_classes=42, train())."""
    model = copy.deepcopy(patched(name))
    model.reset_classifier(42)
    return model.train()


def images(name, batch):
    torch.manual_seed(1)
    size = _image_size(name)
    return torch.randn(batch, 3, size, size)


def _fused_modules(model):
    return [m for m in model.modules() if isinstance(m, tuple(FX_LEAF_MODULES))]


def _tolerance(name):
    return dict(atol=1e-4, rtol=1e-4) if name.startswith("levit") else dict(atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", MODELS)
def test_forward_matches_unpatched(name):
    x = images(name, 1)
    model = patched(name)
    with torch.no_grad():
        expected = armour_kernels.unpatch(copy.deepcopy(model))(x)
    out = model(x)
    assert out.shape[0] == 1 and not torch.isnan(out).any()
    torch.testing.assert_close(out, expected, **_tolerance(name))
    model.set_grad_checkpointing()  # timm: checkpointing changes nothing
    try:
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)
    finally:
        model.set_grad_checkpointing(False)


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    model = for_training(name)
    out = model(images(name, 2))
    out = torch.cat(out) if isinstance(out, tuple) else out
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert out.shape[-1] == 42 and not torch.isnan(out).any()


@pytest.mark.parametrize("name", MODELS)
def test_default_cfg_heads_and_names(name):
    """timm's check for transformers: features, pre-logits, the classifier reset, the cfg's layer names."""
    model = copy.deepcopy(patched(name))
    x = images(name, 1)
    cfg, state = model.default_cfg, model.state_dict()
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape[-1 if features.ndim == 3 else 1] == model.num_features
        assert pre_logits.shape[1] == model.head_hidden_size
        model.reset_classifier(0)
        pooled = model(x)
        assert pooled.shape == pre_logits.shape and pooled.shape[1] == model.head_hidden_size
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
    first_convs = cfg["first_conv"] if isinstance(cfg["first_conv"], (tuple, list)) else (cfg["first_conv"],)
    for layer in (*classifiers, *first_convs):
        assert layer + ".weight" in state, f"{layer} not in the state dict"


def _check_feature_maps(feature_info, maps, size):
    assert len(maps) == len(feature_info.channels())
    for channels, reduction, fmap in zip(feature_info.channels(), feature_info.reduction(), maps):
        assert fmap.shape[1] == channels and fmap.shape[0] == 1 and not torch.isnan(fmap).any()
        assert fmap.shape[2] <= math.ceil(size / reduction) + 1 and fmap.shape[3] <= math.ceil(size / reduction) + 1


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_and_features_only(name):
    x, size = images(name, 1), _image_size(name)
    with torch.no_grad():
        model = patched(name)
        final, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        _check_feature_maps(timm.models.FeatureInfo(model.feature_info, len(model.feature_info)), intermediates, size)
        torch.testing.assert_close(final, model.forward_features(x))
        wrapper = create(name, features_only=True, feature_cls="getter").eval()
        _check_feature_maps(wrapper.feature_info, wrapper(x), size)


# ----------------------------------------------------------------------------- torch.fx

TIMM_TRACER = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                   param_shapes_constant=True)


def fx_model(model, tracer_kwargs=TIMM_TRACER):
    """timm's test extractor: torchvision's create_feature_extractor returning the last node (timm's leaf list)."""
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=train_nodes[-1:], eval_return_nodes=eval_nodes[-1:],
                                    tracer_kwargs=tracer_kwargs)


def _assert_fused_leaves(graph_module):
    """The traced graph calls the fused modules themselves (leaves), so their kernels run."""
    called = [graph_module.get_submodule(n.target) for n in graph_module.graph.nodes if n.op == "call_module"]
    assert any(isinstance(m, tuple(FX_LEAF_MODULES)) for m in called)


def test_fused_classes_are_timm_notrace_modules():
    assert set(FX_LEAF_MODULES) <= set(get_notrace_modules())


def test_fx_leaves_without_timm():
    """timm is optional: without it armour_kernels.nn imports, and a plain torch.fx trace keeps the fused
    modules whole (the module records its own leaf node)."""
    code = ("import sys; sys.modules['timm'] = None\n"
            "import torch, torch.fx\n"
            "from armour_kernels.nn import FusedDeiTAttention, FX_LEAF_MODULES\n"
            "assert FusedDeiTAttention in FX_LEAF_MODULES\n"
            "m = torch.nn.Sequential(FusedDeiTAttention(16, 2, backend='reference'))\n"
            "g = torch.fx.symbolic_trace(m)\n"
            "assert [n.op for n in g.graph.nodes] == ['placeholder', 'call_module', 'output']\n"
            "x = torch.randn(1, 3, 16); assert torch.equal(g(x), m(x)); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("name", MODELS)
def test_fx_forward_equals_eager(name):
    model = patched(name)
    x = images(name, 1)
    with torch.inference_mode():
        expected = model(x)
        for tracer_kwargs in (TIMM_TRACER, None):  # None: torchvision told nothing of timm's leaves
            traced = fx_model(model, tracer_kwargs)
            _assert_fused_leaves(traced)
            assert torch.equal(torch.cat(tuple(traced(x).values())), expected)
        features = timm.layers.create_feature_extractor(model, [model.feature_info[-1]["module"]])  # timm's own
        assert list(features(x).values())[0].shape[0] == 1


@pytest.mark.parametrize("name", MODELS)
def test_fx_backward_reaches_every_parameter(name):
    model = for_training(name)
    traced = fx_model(model)
    _assert_fused_leaves(traced)
    out = torch.cat(tuple(traced(images(name, 2)).values()))
    out.mean().backward()
    missing = [n for n, p in traced.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(p.numel() for p in traced.parameters()) == sum(p.numel() for p in model.parameters())
    assert out.shape[-1] == 42 and not torch.isnan(out).any()


# ----------------------------------------------------------------------------- TorchScript

def _assert_calls_attention_op(scripted):
    assert "armour_kernels::attention" in str(scripted.inlined_graph)


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_forward(name):
    model = patched(name)
    scripted = torch.jit.script(model)
    _assert_calls_attention_op(scripted)
    x = images(name, 1)
    with torch.no_grad():
        out = scripted(x)
        assert out.shape[0] == 1 and not torch.isnan(out).any()
        torch.testing.assert_close(out, model(x), **_tolerance(name))


@pytest.mark.parametrize("name", FX_SCRIPT_MODELS)
def test_fx_then_torchscript_forward(name):
    model = patched(name)
    scripted = torch.jit.script(fx_model(model))
    _assert_calls_attention_op(scripted)
    x = images(name, 1)
    with torch.inference_mode():
        out = torch.cat(tuple(scripted(x).values()))
        assert out.shape[0] == 1 and not torch.isnan(out).any()
        torch.testing.assert_close(out, model(x), **_tolerance(name))
