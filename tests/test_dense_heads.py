"""transformers' detection and segmentation heads on FDConv backbones: DETR (timm backbone), Mask2Former
(transformers ResNet and Swin backbones) and UperNet (ResNet, ConvNeXt, Swin).

Each tiny model runs a training step (forward with labels, loss, backward reaching the FDConv attentions),
then ``save_pretrained``/``from_pretrained`` must give back FDConv layers and the same outputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from fdconv_testing import perturb_attention
from transformers import (
    DetrConfig,
    DetrForObjectDetection,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)
from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d

from fdconv_zoo import FDConv
from fdconv_zoo.transformers_models.convnext import FDConvConvNextConfig
from fdconv_zoo.transformers_models.resnet import FDConvResNetConfig
from fdconv_zoo.transformers_models.swin import FDConvSwinConfig

SIZE = 64
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def backbone_config(family: str):
    if family == "resnet":
        return FDConvResNetConfig(
            layer_type="basic",
            depths=[1, 1, 1, 1],
            hidden_sizes=[32, 64, 96, 128],
            embedding_size=32,
            out_features=STAGES,
        )
    if family == "convnext":
        return FDConvConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 96, 128], out_features=STAGES)
    return FDConvSwinConfig(
        embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], image_size=SIZE, window_size=2, out_features=STAGES
    )


def fdconv_layers(model: nn.Module) -> list[FDConv]:
    return [m for m in model.modules() if isinstance(m, FDConv) and m.use_fdconv]


def train_step(model: nn.Module, **inputs) -> None:
    perturb_attention(model)  # at the neutral init the descriptor projections get no gradient
    model.train()
    loss = model(**inputs).loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = [layer.KSM_Global.fc.weight.grad for layer in fdconv_layers(model)]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def assert_reload_keeps_fdconv(model: nn.Module, tmp_path, output: str, **inputs) -> None:
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    model.eval()
    assert len(fdconv_layers(reloaded)) == len(fdconv_layers(model)) > 0
    with torch.no_grad():
        torch.testing.assert_close(
            getattr(reloaded(**inputs), output), getattr(model(**inputs), output), rtol=0, atol=1e-6
        )


def detr() -> DetrForObjectDetection:
    config = DetrConfig(
        use_timm_backbone=True,
        backbone="resnet18_fdconv",
        use_pretrained_backbone=False,
        num_labels=3,
        num_queries=5,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
    )
    model = DetrForObjectDetection(config)
    with torch.no_grad():  # DETR freezes the backbone's BatchNorms, timm zero-initialises each block's last one
        for module in model.modules():
            if isinstance(module, DetrFrozenBatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
    return model


def test_detr_with_timm_fdconv_backbone_trains():
    model = detr()
    boxes = torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2]])
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": boxes},
        {"class_labels": torch.tensor([1]), "boxes": boxes[:1]},
    ]
    train_step(model, pixel_values=images(), labels=labels)
    # layer2..4 train (DETR freezes the stem and layer1), FDConv layers included
    assert model.model.backbone.model.layer2[0].conv1.dft_weight.grad is not None


def test_detr_with_timm_fdconv_backbone_reloads(tmp_path):
    assert_reload_keeps_fdconv(perturb_attention(detr()), tmp_path / "detr", "logits", pixel_values=images())


def test_detr_reload_with_buffers_recomputed(tmp_path):
    model = perturb_attention(detr()).eval()
    model.save_pretrained(tmp_path)
    reloaded = DetrForObjectDetection.from_pretrained(tmp_path).eval()
    for layer in fdconv_layers(reloaded):
        layer.init_non_persistent_buffers()  # the workaround the README gives
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(pixel_values=images()).logits, model(pixel_values=images()).logits, rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("family", ["resnet", "swin"])
def test_mask2former_with_fdconv_backbone(family, tmp_path):
    config = Mask2FormerConfig(
        backbone_config=backbone_config(family),
        num_labels=3,
        num_queries=5,
        hidden_dim=32,
        mask_feature_size=32,
        feature_size=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        train_num_points=64,
        common_stride=4,
    )
    model = Mask2FormerForUniversalSegmentation(config)
    masks = torch.zeros(2, SIZE, SIZE)
    masks[0, :32], masks[1, 32:] = 1, 1
    train_step(
        model,
        pixel_values=images(),
        mask_labels=[masks, masks[:1]],
        class_labels=[torch.tensor([0, 2]), torch.tensor([1])],
    )
    assert_reload_keeps_fdconv(model, tmp_path / f"mask2former_{family}", "masks_queries_logits", pixel_values=images())


@pytest.mark.parametrize("family", ["resnet", "convnext", "swin"])
def test_upernet_with_fdconv_backbone(family, tmp_path):
    backbone = backbone_config(family)
    stage3_width = backbone.hidden_sizes[2] if family != "swin" else backbone.embed_dim * 4
    config = UperNetConfig(
        backbone_config=backbone,
        num_labels=3,
        hidden_size=32,
        pool_scales=[1, 2],
        auxiliary_in_channels=stage3_width,
        auxiliary_channels=16,
    )
    model = UperNetForSemanticSegmentation(config)
    labels = torch.randint(0, 3, (2, SIZE, SIZE), generator=torch.Generator().manual_seed(1))
    train_step(model, pixel_values=images(), labels=labels)
    assert_reload_keeps_fdconv(model, tmp_path / f"upernet_{family}", "logits", pixel_values=images())
