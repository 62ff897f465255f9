"""The detector on an FDConv backbone: weights loaded bitwise and checked, kept through save/reload, the
mmdet freezing defaults with FDConv's attentions still learning, and training at batch 1.

The reference is the timm classifier the weights come from, run in float64 (a randomly initialised deep
network is chaotic in float32).
"""

from __future__ import annotations

import pytest
import timm
import torch
from detection_testing import TINY_BACKBONE, TINY_DETECTOR, tiny_checkpoint
from fdconv_testing import perturb_attention
from transformers import AutoModelForObjectDetection

from fdconv_zoo import FDConv
from fdconv_zoo.finetune import FinetuneInputError
from fdconv_zoo.finetune.detection import (
    backbone_of,
    build_detector,
    freeze_backbone_defaults,
    load_backbone_source,
    load_backbone_weights,
)

CLASSES = {0: "red", 1: "green", 2: "blue"}


def targets(batch: int) -> list[dict[str, torch.Tensor]]:
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])
    return [{"class_labels": torch.tensor([0, 2]), "boxes": boxes} for _ in range(batch)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def fdconv_count(model: torch.nn.Module) -> int:
    return sum(isinstance(m, FDConv) and m.use_fdconv for m in model.modules())


def source_features(source, images: torch.Tensor) -> list[torch.Tensor]:
    """The classifier's stride-8/16/32 feature maps in float64: the reference the detector's backbone must match."""
    model = timm.create_model(source.architecture, features_only=True, out_indices=(2, 3, 4))
    model.load_state_dict({k: v for k, v in source.state_dict.items() if not k.startswith("fc.")})
    return model.double().eval()(images.double())


def test_backbone_weights_load_bitwise_and_survive_a_reload(checkpoint, tmp_path):
    source = load_backbone_source(checkpoint)
    detector = build_detector("rt-detr-v2", source, CLASSES, **TINY_DETECTOR)
    backbone = backbone_of(detector)
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, source.state_dict[key]), key  # the tiny ResNet's names are not flattened
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = source_features(source, images)
    detector.double().eval()
    with torch.no_grad():
        got = backbone(images.double())
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)  # frozen batch norms compute what the source's do

    detector.float().save_pretrained(tmp_path / "model")
    reloaded = AutoModelForObjectDetection.from_pretrained(tmp_path / "model")
    reloaded_state = backbone_of(reloaded).state_dict()
    assert reloaded_state.keys() == backbone.state_dict().keys()
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(reloaded_state[key], tensor), key
    assert fdconv_count(reloaded) == fdconv_count(detector) > 0
    with torch.no_grad():
        got = backbone_of(reloaded.double().eval())(images.double())
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_weights_of_another_architecture_are_refused(checkpoint):
    source = load_backbone_source(checkpoint)
    detector = build_detector("rt-detr-v2", load_backbone_source("resnet18_fdconv"), CLASSES, **TINY_DETECTOR)
    with pytest.raises(FinetuneInputError, match="not of this architecture"):
        load_backbone_weights(backbone_of(detector), source.state_dict)


def test_training_step_reaches_fdconv_attentions_in_the_frozen_stage_too(checkpoint):
    detector = build_detector("rt-detr-v2", load_backbone_source(checkpoint), CLASSES, **TINY_DETECTOR)
    freeze_backbone_defaults(detector, frozen_stages=1)
    perturb_attention(detector)  # at the neutral init the descriptor projections get no gradient
    detector.train()
    backbone = backbone_of(detector)
    assert not backbone.conv1.weight.requires_grad  # the stem is frozen
    assert not backbone.layer1[0].conv1.dft_weight.requires_grad  # so are the first stage's spectra
    assert backbone.layer2[0].conv1.dft_weight.requires_grad
    detector(pixel_values=torch.rand(2, 3, 64, 64), labels=targets(2)).loss.backward()
    for stage in ("layer1", "layer2", "layer4"):
        attention = [p.grad for n, p in backbone.named_parameters() if n.startswith(stage) and "KSM" in n]
        assert attention and any(g is not None and g.abs().sum() > 0 for g in attention), stage


@pytest.mark.parametrize("detector_name", ["rt-detr-v2", "d-fine", "detr"])
def test_each_detector_trains_at_batch_1(detector_name, checkpoint):
    overrides = (
        dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10)
        if detector_name == "detr"
        else dict(TINY_DETECTOR, **({"decoder_layers": 3} if detector_name == "d-fine" else {}))
    )
    detector = build_detector(detector_name, load_backbone_source(checkpoint), CLASSES, **overrides)
    freeze_backbone_defaults(detector)
    detector.train()
    loss = detector(pixel_values=torch.rand(1, 3, 64, 64), labels=targets(1)).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert backbone_of(detector).layer4[0].conv2.dft_weight.grad.abs().sum() > 0


def test_unknown_backbones_and_detector_fields_are_refused():
    with pytest.raises(
        FinetuneInputError, match="unknown timm model 'resnet18_fdcnv'; FDConv backbones: .*resnet18_fdconv"
    ):
        load_backbone_source("resnet18_fdcnv")
    with pytest.raises(FinetuneInputError, match="unknown pretrained tag 'resnet18_fdconv.nope'"):
        load_backbone_source("resnet18_fdconv.nope")
    with pytest.raises(FinetuneInputError, match="RTDetrV2Config has no field num_querys"):
        build_detector("rt-detr-v2", load_backbone_source(TINY_BACKBONE), CLASSES, num_querys=5)
    with pytest.raises(
        FinetuneInputError, match="channels-last features: for Swin pass the folder of a transformers FDConv Swin"
    ):
        build_detector("rt-detr-v2", load_backbone_source("swin_tiny_patch4_window7_224_fdconv"), CLASSES)


def test_swin_through_the_transformers_config(tmp_path):
    from transformers import AutoBackbone

    from fdconv_zoo.transformers_models.swin import FDConvSwinConfig

    config = FDConvSwinConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], image_size=64, window_size=2)
    torch.manual_seed(0)
    perturb_attention(AutoBackbone.from_config(config)).save_pretrained(tmp_path / "swin")
    source = load_backbone_source(str(tmp_path / "swin"))
    assert source.backbone_config.out_features == ["stage2", "stage3", "stage4"]
    detector = build_detector("rt-detr-v2", source, CLASSES, **TINY_DETECTOR)
    backbone = backbone_of(detector)
    assert type(backbone).__name__ == "FDConvSwinBackbone"
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, source.state_dict[key]), key
    freeze_backbone_defaults(detector, frozen_stages=1)
    detector.train()
    detector(pixel_values=torch.rand(1, 3, 64, 64), labels=targets(1)).loss.backward()
    frozen = [(n, p) for n, p in backbone.named_parameters() if n.startswith("swin.encoder.layers.0.")]
    assert frozen and all(not p.requires_grad for n, p in frozen if "KSM" not in n and "FBM" not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in frozen if "KSM" in n)
    detector.save_pretrained(tmp_path / "detector")
    reloaded = backbone_of(AutoModelForObjectDetection.from_pretrained(tmp_path / "detector")).state_dict()
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(reloaded[key], tensor), key
    with pytest.raises(FinetuneInputError, match="DETR cannot save and reload here: use --detector rt-detr-v2"):
        build_detector("detr", source, CLASSES)
