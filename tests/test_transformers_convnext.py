"""FDConv ConvNeXt for transformers: FDConv placement (the block MLPs, token layout) and plain fallbacks."""

import torch
from fdconv_testing import relative_error
from test_transformers_common import random_native
from transformers import ConvNextConfig, ConvNextForImageClassification

from fdconv_zoo import FDConv
from fdconv_zoo.transformers_models.convnext import (
    FDConvConvNextConfig,
    FDConvConvNextForImageClassification,
    FDConvConvNextModel,
)


def test_only_the_block_mlps_are_token_layout_fdconv():
    model = FDConvConvNextModel(FDConvConvNextConfig(hidden_sizes=[24, 32, 40, 48], depths=[1, 2, 1, 1]))
    layers = {name: m for name, m in model.named_modules() if isinstance(m, FDConv)}
    assert len(layers) == 2 * 5
    assert all(
        name.endswith(("pwconv1", "pwconv2")) and layer.token_layout and layer.use_fdconv
        for name, layer in layers.items()
    )
    assert not any(hasattr(layer, "FBM") for layer in layers.values())  # 1x1 layers: no frequency band modulation
    block = model.encoder.stages[1].layers[1]
    assert (block.pwconv1.in_channels, block.pwconv1.out_channels) == (32, 128)
    plain = [
        m
        for name, m in model.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and ".KSM_" not in name and ".FBM" not in name
    ]
    assert {type(m) for m in plain} == {torch.nn.Conv2d}  # depthwise, patchify and downsampling convolutions
    assert len(plain) == 5 + 1 + 3


def test_narrow_stage_keeps_plain_mlps_and_loads_unchanged(tmp_path):
    """With 16 channels the stage-1 MLPs (16 -> 64 -> 16) fall back to plain layers and keep their `weight` keys."""
    native = random_native(
        ConvNextForImageClassification, ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=3)
    )
    native.save_pretrained(tmp_path)
    model, info = FDConvConvNextForImageClassification.from_pretrained(tmp_path, output_loading_info=True)

    stage_one, stage_two = model.convnext.encoder.stages[0].layers[0], model.convnext.encoder.stages[1].layers[0]
    assert not stage_one.pwconv1.use_fdconv and not stage_one.pwconv2.use_fdconv
    assert stage_two.pwconv1.use_fdconv and stage_two.pwconv2.use_fdconv
    assert not info["unexpected_keys"] and all("KSM" in key for key in info["missing_keys"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(model(x).logits, native(x).logits) <= 1e-4
