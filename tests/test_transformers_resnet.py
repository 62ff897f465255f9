"""FDConv ResNet for transformers: FDConv placement of the official backbone and block variants."""

import pytest
import torch
from fdconv_testing import relative_error
from test_transformers_common import random_native
from transformers import ResNetConfig, ResNetForImageClassification, ResNetModel

from fdconv_zoo import FDConv
from fdconv_zoo.transformers_models.resnet import (
    FDConvResNetConfig,
    FDConvResNetForImageClassification,
    FDConvResNetModel,
)


def test_resnet50_has_fdconv_exactly_where_the_official_backbone_has_it():
    """The official backbone: 48 real FDConv layers (16 with FBM), +3,647,120 parameters over the plain ResNet-50."""
    with torch.device("meta"):
        fdconv, plain = FDConvResNetModel(FDConvResNetConfig()), ResNetModel(ResNetConfig())
    layers = {name: m for name, m in fdconv.named_modules() if isinstance(m, FDConv)}
    assert len(layers) == 48 and all(layer.use_fdconv and layer.kernel_num == 64 for layer in layers.values())
    assert all(name.endswith(("layer.0.convolution", "layer.1.convolution", "layer.2.convolution")) for name in layers)
    assert sum(hasattr(layer, "FBM") for layer in layers.values()) == 16
    assert all(hasattr(layer, "FBM") == (layer.kernel_size == (3, 3)) for layer in layers.values())
    assert type(fdconv.embedder.embedder.convolution) is torch.nn.Conv2d
    shortcuts = [
        m.convolution for name, m in fdconv.named_modules() if name.endswith("shortcut") and hasattr(m, "convolution")
    ]
    assert len(shortcuts) == 4 and all(type(conv) is torch.nn.Conv2d for conv in shortcuts)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(fdconv) - count(plain) == 3_647_120


@pytest.mark.parametrize(
    "variant",
    [
        dict(layer_type="basic", hidden_sizes=[32, 48]),
        dict(
            layer_type="bottleneck",
            hidden_sizes=[80, 96],
            downsample_in_bottleneck=True,
            downsample_in_first_stage=True,
        ),
    ],
    ids=["basic", "stride-in-1x1"],
)
def test_block_variants_convert_exactly(variant, tmp_path):
    config = ResNetConfig(embedding_size=24, depths=[2, 1], num_labels=3, **variant)
    native = random_native(ResNetForImageClassification, config)
    native.save_pretrained(tmp_path)
    model = FDConvResNetForImageClassification.from_pretrained(tmp_path)

    layers = [m for m in model.modules() if isinstance(m, FDConv)]
    per_block = 2 if variant["layer_type"] == "basic" else 3
    assert len(layers) == per_block * 3 and all(layer.use_fdconv for layer in layers)
    if variant.get("downsample_in_bottleneck"):
        assert model.resnet.encoder.stages[1].layers[0].layer[0].convolution.stride == (2, 2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(model(x).logits, native(x).logits) <= 1e-4


def test_narrow_block_convolutions_stay_plain_and_load_unchanged(tmp_path):
    """Bottleneck 1x1/3x3 layers with <= 16 channels fall back to plain convolutions, keeping their `weight` key."""
    config = ResNetConfig(embedding_size=16, hidden_sizes=[64, 96], depths=[1, 1], num_labels=3)
    native = random_native(ResNetForImageClassification, config)
    native.save_pretrained(tmp_path)
    model, info = FDConvResNetForImageClassification.from_pretrained(tmp_path, output_loading_info=True)

    first_block = model.resnet.encoder.stages[0].layers[0].layer
    assert [conv.convolution.use_fdconv for conv in first_block] == [False, False, False]  # 16 -> 16 -> 16 -> 64
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not any(
        key.startswith("resnet.encoder.stages.0.") and ("KSM" not in key and "FBM" not in key)
        for key in info["missing_keys"]
    )
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(model(x).logits, native(x).logits) <= 1e-4
