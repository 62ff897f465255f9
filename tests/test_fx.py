"""FX graph tracing of FDConv models: FDConv is a leaf (its forward depends on the input's values).

timm's FX feature extraction takes the leaf from timm's no-trace registry (filled when ``fdconv_zoo`` is
imported); torchvision's ``create_feature_extractor`` takes it as ``leaf_modules``. The reference is the same
model run eagerly.
"""

from __future__ import annotations

import pytest
import timm
import torch
from fdconv_testing import perturb_attention, randomize_norms
from timm.models import create_feature_extractor, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor as torchvision_feature_extractor

from fdconv_zoo import FDConv, FDConv1d, FDConv3d
from fdconv_zoo.layers import FDConv as LayerFDConv


def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def fdconv_nodes(graph_module: torch.fx.GraphModule) -> int:
    return sum(
        node.op == "call_module" and isinstance(graph_module.get_submodule(node.target), FDConv)
        for node in graph_module.graph.nodes
    )


def test_fdconv_layers_are_timm_notrace_modules():
    assert {FDConv, FDConv1d, FDConv3d} <= set(get_notrace_modules()) and FDConv is LayerFDConv


@pytest.mark.parametrize("arch", ["resnet18_fdconv", "convnext_atto_fdconv"])
def test_timm_fx_features_equal_eager_features(arch):
    torch.manual_seed(0)
    eager = timm.create_model(arch, features_only=True).eval()
    torch.manual_seed(0)  # the same weights
    traced = timm.create_model(arch, features_only=True, feature_cls="fx").eval()
    assert fdconv_nodes(traced.graph_module) == sum(isinstance(m, FDConv) and m.use_fdconv for m in eager.modules())
    x = images()
    with torch.no_grad():
        for a, e in zip(traced(x), eager(x), strict=True):
            torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_timm_create_feature_extractor_trains():
    model = randomize_norms(perturb_attention(timm.create_model("resnet18_fdconv")))  # gradients reach every layer
    extractor = create_feature_extractor(model, {"layer2": "c3", "layer4": "c5"})
    out = extractor(images())
    out["c5"].square().mean().backward()
    assert out["c3"].shape == (2, 128, 8, 8)
    assert model.layer1[0].conv2.KSM_Global.fc.weight.grad.abs().sum() > 0  # gradients reach the attentions


def test_torchvision_feature_extractor_with_fdconv_leaf():
    model = timm.create_model("resnet18_fdconv").eval()
    extractor = torchvision_feature_extractor(
        model, ["layer3", "layer4"], tracer_kwargs={"leaf_modules": [FDConv]}
    ).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)["layer4"], model.forward_features(x), rtol=0, atol=0)
