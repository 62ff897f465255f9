"""Mask2Former on an FDConv backbone: the backbone's weights loaded bitwise and kept through save/reload, the
detection freezing defaults with FDConv's attentions still learning, training at batch 1 and 2 (an image
without objects included), and the zoo's transformers Swin as the backbone."""

from __future__ import annotations

import pytest
import torch
from detection_testing import tiny_checkpoint
from fdconv_testing import perturb_attention
from instance_testing import TINY_MASK2FORMER
from transformers import AutoModelForUniversalSegmentation, Mask2FormerForUniversalSegmentation

from fdconv_zoo import FDConv
from fdconv_zoo.finetune import FinetuneInputError
from fdconv_zoo.finetune.detection import backbone_of, freeze_backbone_defaults, load_backbone_source
from fdconv_zoo.finetune.instance_segmentation import build_mask2former
from fdconv_zoo.finetune.instance_segmentation.model import FEATURE_MAPS

CLASSES = {0: "red", 1: "green", 2: "blue"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def targets(batch: int) -> dict[str, list[torch.Tensor]]:
    """Two rectangles of classes 0 and 2 in the first image; the second image (batch 2) has no objects."""
    masks = torch.zeros(2, 64, 64)
    masks[0, 8:30, 4:28], masks[1, 36:60, 30:62] = 1, 1
    mask_labels, class_labels = [masks], [torch.tensor([0, 2])]
    if batch == 2:
        mask_labels.append(torch.zeros(0, 64, 64))
        class_labels.append(torch.zeros(0, dtype=torch.long))
    return dict(mask_labels=mask_labels, class_labels=class_labels)


def attention_gradients(backbone: torch.nn.Module, stage: str) -> list[torch.Tensor | None]:
    return [p.grad for n, p in backbone.named_parameters() if n.startswith(stage) and ("KSM" in n or "FBM" in n)]


@pytest.mark.parametrize("batch", [1, 2])
def test_training_step_reaches_fdconv_attentions_in_the_frozen_stage_too(checkpoint, batch):
    source = load_backbone_source(checkpoint)
    model = build_mask2former(source, CLASSES, **TINY_MASK2FORMER)
    backbone = backbone_of(model)
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, source.state_dict[key]), key  # loaded bitwise
    freeze_backbone_defaults(model, frozen_stages=1)
    perturb_attention(model)  # at the neutral init the descriptor projections get no gradient
    model.train()
    assert not backbone.conv1.weight.requires_grad  # the stem is frozen
    assert not backbone.layer1[0].conv1.dft_weight.requires_grad  # so are the first stage's spectra
    assert not backbone.layer2[0].bn1.training  # batch-norm statistics stay fixed
    images = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    loss = model(pixel_values=images, **targets(batch)).loss
    assert torch.isfinite(loss)
    loss.backward()
    for stage in ("layer1", "layer2", "layer4"):
        gradients = attention_gradients(backbone, stage)
        assert gradients and any(g is not None and g.abs().sum() > 0 for g in gradients), stage
    assert backbone.layer4[0].conv2.dft_weight.grad.abs().sum() > 0


def test_saved_model_reloads_with_the_same_backbone_and_outputs(checkpoint, tmp_path):
    model = build_mask2former(load_backbone_source(checkpoint), CLASSES, **TINY_MASK2FORMER).eval()
    model.save_pretrained(tmp_path / "model")
    reloaded = AutoModelForUniversalSegmentation.from_pretrained(tmp_path / "model").eval()
    assert isinstance(reloaded, Mask2FormerForUniversalSegmentation)
    assert sum(isinstance(m, FDConv) and m.use_fdconv for m in reloaded.modules()) > 0
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(pixel_values=images), reloaded(pixel_values=images)
    torch.testing.assert_close(got.masks_queries_logits, expected.masks_queries_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.class_queries_logits, expected.class_queries_logits, rtol=0, atol=1e-5)


def test_unknown_config_fields_and_timm_swin_are_refused_with_the_fix(checkpoint):
    with pytest.raises(FinetuneInputError, match="Mask2FormerConfig has no field num_querys"):
        build_mask2former(load_backbone_source(checkpoint), CLASSES, num_querys=5)
    with pytest.raises(FinetuneInputError, match="channels-last features: for Swin pass the folder of a transformers"):
        build_mask2former(load_backbone_source("swin_tiny_patch4_window7_224_fdconv"), CLASSES)


def test_swin_through_the_transformers_config(tmp_path):
    from transformers import AutoBackbone

    from fdconv_zoo.transformers_models.swin import FDConvSwinConfig

    config = FDConvSwinConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], image_size=64, window_size=2)
    torch.manual_seed(0)
    perturb_attention(AutoBackbone.from_config(config)).save_pretrained(tmp_path / "swin")
    source = load_backbone_source(str(tmp_path / "swin"), feature_maps=FEATURE_MAPS)
    assert source.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    model = build_mask2former(source, CLASSES, **TINY_MASK2FORMER)
    backbone = backbone_of(model)
    assert type(backbone).__name__ == "FDConvSwinBackbone"
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, source.state_dict[key]), key
    freeze_backbone_defaults(model, frozen_stages=1)
    model.train()
    model(pixel_values=torch.rand(1, 3, 64, 64), **targets(1)).loss.backward()
    frozen = [(n, p) for n, p in backbone.named_parameters() if n.startswith("swin.encoder.layers.0.")]
    assert frozen and all(not p.requires_grad for n, p in frozen if "KSM" not in n and "FBM" not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in frozen if "KSM" in n)
    model.save_pretrained(tmp_path / "model")
    reloaded = backbone_of(AutoModelForUniversalSegmentation.from_pretrained(tmp_path / "model")).state_dict()
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(reloaded[key], tensor), key
