"""Official FDConv checkpoints (mmdet/mmseg detectors and segmentors, the converted ImageNet ResNet) load into
the timm and transformers FDConv ResNets, and no pretrained load leaves a backbone tensor unset silently.

The "official backbone" is an FDConv ResNet with random (non-neutral) attentions and norms whose state dict
follows the official ``ResNet_FDConv`` layout (checked against the names the specification lists); the test
checkpoints wrap it as mmdet writes them (``meta``, nested ``state_dict``, ``backbone.`` prefix, neck and head
groups). The reference for every load is that backbone's own stage outputs.
"""

from __future__ import annotations

import logging

import pytest
import timm
import torch
import torch.nn as nn
from fdconv_testing import perturb_attention, randomize_norms, relative_error

from fdconv_zoo import load_official_checkpoint
from fdconv_zoo.transformers_models.resnet import (
    FDConvResNetBackbone,
    FDConvResNetConfig,
    FDConvResNetForImageClassification,
)

ATOL = 1e-5
# Two block types: BasicBlock (ResNet-18) and Bottleneck with a stage-1 shortcut (ResNet-50 at reduced depth).
ARCHS = {
    "resnet18_fdconv": dict(),
    "resnet50_fdconv": dict(layers=(1, 1, 1, 1)),
}
HF_CONFIGS = {
    "resnet18_fdconv": dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512]),
    "resnet50_fdconv": dict(layer_type="bottleneck", depths=[1, 1, 1, 1], hidden_sizes=[256, 512, 1024, 2048]),
}
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


_backbones: dict[str, nn.Module] = {}


def official_backbone(arch: str) -> nn.Module:
    """An FDConv ResNet as a trained official backbone would be: attentions, norms and BN statistics away from init."""
    if arch not in _backbones:
        model = timm.create_model(arch, **ARCHS[arch])
        perturb_attention(model, seed=1)
        randomize_norms(model, seed=2)
        _backbones[arch] = model.eval()
    return _backbones[arch]


@torch.no_grad()
def stage_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The stem activation and the four stage outputs, computed module by module."""
    stem = model.act1(model.bn1(model.conv1(x)))
    outputs, y = [stem], model.maxpool(stem)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        y = stage(y)
        outputs.append(y)
    return outputs


def detector_checkpoint(backbone: dict[str, torch.Tensor]) -> dict:
    """An mmdet Faster R-CNN checkpoint around ``backbone`` (FPN neck, RPN and RoI heads, as mmdet saves it)."""
    state_dict = {f"backbone.{k}": v for k, v in backbone.items() if not k.startswith("fc.")}
    state_dict.update(
        {
            "neck.lateral_convs.0.conv.weight": torch.randn(256, 64, 1, 1),
            "neck.lateral_convs.0.conv.bias": torch.randn(256),
            "neck.fpn_convs.0.conv.weight": torch.randn(256, 256, 3, 3),
            "rpn_head.rpn_conv.weight": torch.randn(256, 256, 3, 3),
            "rpn_head.rpn_cls.weight": torch.randn(3, 256, 1, 1),
            "roi_head.bbox_head.fc_cls.weight": torch.randn(81, 1024),
            "roi_head.bbox_head.fc_reg.weight": torch.randn(320, 1024),
        }
    )
    meta = {
        "mmdet_version": "2.28.2",
        "CLASSES": ("person", "bicycle"),
        "epoch": 12,
        "iter": 87960,
        "config": "model = dict(...)",
    }
    return {"meta": meta, "state_dict": state_dict, "optimizer": {"state": {}, "param_groups": []}}


@pytest.fixture(scope="module", params=list(ARCHS))
def detector_file(request, tmp_path_factory) -> tuple[str, str]:
    arch = request.param
    path = tmp_path_factory.mktemp("official") / f"faster_rcnn_{arch}.pth"
    torch.save(detector_checkpoint(official_backbone(arch).state_dict()), path)
    return arch, str(path)


def official_conversion(weight: torch.Tensor) -> torch.Tensor:
    """``tools/convert_to_fdconv.py`` on one conv weight: weight image, rfft2, (re, im), P axis, / (min(Cout, Cin) // 2)."""
    cout, cin, k, _ = weight.shape
    image = weight.permute(0, 2, 1, 3).reshape(cout * k, cin * k)
    spectrum = torch.fft.rfft2(image)
    return torch.stack([spectrum.real, spectrum.imag], -1)[None] / (min(cout, cin) // 2)


def test_backbone_keys_follow_the_official_layout():
    keys = set(official_backbone("resnet50_fdconv").state_dict())
    for key in (
        "conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.conv1.dft_weight",
        "layer1.0.conv3.dft_weight",
        "layer3.0.conv2.KSM_Global.kernel_fc.weight",
        "layer3.0.conv2.FBM.freq_weight_conv_list.1.bias",
        "layer3.0.conv2.KSM_Local.conv.weight",
        "layer3.0.conv2.KSM_Global.bn.running_var",
    ):
        assert key in keys, key
    # the stem and the shortcut stay plain convolutions, the block convolutions keep no plain weight
    assert "conv1.dft_weight" not in keys and not any(k.endswith(("conv2.weight", "conv3.weight")) for k in keys)
    per_layer = [k for k in keys if k.startswith("layer3.0.conv2.") and not k.endswith("num_batches_tracked")]
    assert len(per_layer) == 1 + 24  # dft_weight and the 24 attention tensors of a 3x3 FDConv


@pytest.mark.parametrize("num_classes", [None, 0], ids=["features_only", "num_classes_0"])
def test_detector_checkpoint_reproduces_backbone_stages(detector_file, num_classes, caplog):
    arch, path = detector_file
    kwargs = dict(features_only=True) if num_classes is None else dict(num_classes=0)
    with caplog.at_level(logging.INFO, logger="fdconv_zoo"):
        model = timm.create_model(
            arch, pretrained=True, pretrained_cfg_overlay=dict(file=path), **ARCHS[arch], **kwargs
        ).eval()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "fdconv_zoo.official_checkpoints"]
    assert "dropped 7 others" in line and "neck (3)" in line and "rpn_head (2)" in line and "roi_head (2)" in line
    x = images()
    expected = stage_outputs(official_backbone(arch), x)
    with torch.no_grad():
        actual = model(x) if num_classes is None else [model.forward_features(x)]
    for a, e in zip(actual, expected if num_classes is None else expected[-1:]):
        torch.testing.assert_close(a, e, atol=ATOL, rtol=0)
    assert relative_error(expected[-1], stage_outputs(timm.create_model(arch, **ARCHS[arch]).eval(), x)[-1]) > 0.05


def test_detector_checkpoint_into_classifier_asks_for_a_backbone(detector_file):
    arch, path = detector_file
    with pytest.raises(ValueError, match=r"has no classifier \(fc\.\*\).*features_only=True or num_classes=0"):
        timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=path), **ARCHS[arch])


def test_damaged_attention_is_refused(tmp_path):
    checkpoint = detector_checkpoint(official_backbone("resnet18_fdconv").state_dict())
    del checkpoint["state_dict"]["backbone.layer2.0.conv2.FBM.freq_weight_conv_list.1.bias"]
    torch.save(checkpoint, tmp_path / "damaged.pth")
    with pytest.raises(
        ValueError,
        match=r"leaves 1 of the model's \d+ tensors unset \(layer2\.0\.conv2\.FBM\.freq_weight_conv_list\.1\.bias\)",
    ):
        timm.create_model(
            "resnet18_fdconv",
            pretrained=True,
            features_only=True,
            pretrained_cfg_overlay=dict(file=str(tmp_path / "damaged.pth")),
        )


def test_checkpoint_of_another_architecture_is_refused_for_features(tmp_path):
    torch.save(timm.create_model("convnext_atto").state_dict(), tmp_path / "convnext_atto.pth")
    overlay = dict(file=str(tmp_path / "convnext_atto.pth"))
    with pytest.raises(
        ValueError,
        match=(
            r"cannot load .*convnext_atto\.pth into resnet18_fdconv: it leaves \d+ of the model's \d+ tensors unset "
            r"\(conv1\.weight, .*\) and it has \d+ keys the model does not have \(stem\.0\.weight, .*pretrained_strict=False"
        ),
    ):
        timm.create_model("resnet18_fdconv", pretrained=True, features_only=True, pretrained_cfg_overlay=overlay)
    # the explicit opt-out loads what matches (nothing here), as timm does
    timm.create_model(
        "resnet18_fdconv", pretrained=True, features_only=True, pretrained_cfg_overlay=overlay, pretrained_strict=False
    )


def _converted_imagenet_resnet(tmp_path) -> tuple[nn.Module, str]:
    """resnet50_Convert2FDConv.pth made the official way from a plain ResNet: bare keys, block convs as ``dft_weight``."""
    plain = randomize_norms(timm.create_model("resnet50", layers=(1, 1, 1, 1)), seed=3).eval()
    state_dict = {}
    for key, value in plain.state_dict().items():
        block_conv = key.startswith("layer") and key.endswith(("conv1.weight", "conv2.weight", "conv3.weight"))
        state_dict[key.replace(".weight", ".dft_weight") if block_conv else key] = (
            official_conversion(value) if block_conv else value
        )
    path = tmp_path / "resnet50_Convert2FDConv.pth"
    torch.save(state_dict, path)
    return plain, str(path)


def test_converted_imagenet_checkpoint_loads(tmp_path):
    plain, path = _converted_imagenet_resnet(tmp_path)
    model = timm.create_model(
        "resnet50_fdconv", pretrained=True, layers=(1, 1, 1, 1), pretrained_cfg_overlay=dict(file=path)
    ).eval()
    x = images()
    with torch.no_grad():
        assert relative_error(model(x), plain(x)) < ATOL  # neutral attentions: the source network's function
    features = timm.create_model(
        "resnet50_fdconv",
        pretrained=True,
        features_only=True,
        layers=(1, 1, 1, 1),
        pretrained_cfg_overlay=dict(file=path),
    ).eval()
    with torch.no_grad():
        assert relative_error(features(x)[-1], plain.forward_features(x)) < ATOL


# --- transformers -------------------------------------------------------------------------------------------


def hf_backbone(arch: str) -> FDConvResNetBackbone:
    return FDConvResNetBackbone(FDConvResNetConfig(**HF_CONFIGS[arch], out_features=STAGES)).eval()


def test_transformers_backbone_loads_detector_checkpoint(detector_file):
    arch, path = detector_file
    model = load_official_checkpoint(hf_backbone(arch), path)
    x = images()
    with torch.no_grad():
        actual = model(x).feature_maps
    for a, e in zip(actual, stage_outputs(official_backbone(arch), x)[1:]):
        torch.testing.assert_close(a, e, atol=ATOL, rtol=0)


def test_transformers_classifier_loads_converted_checkpoint_backbone(tmp_path):
    plain, path = _converted_imagenet_resnet(tmp_path)
    model = FDConvResNetForImageClassification(FDConvResNetConfig(**HF_CONFIGS["resnet50_fdconv"], num_labels=7)).eval()
    head = model.classifier[1].weight.clone()
    load_official_checkpoint(model, path)
    x = images()
    with torch.no_grad():
        features = model.resnet(x).last_hidden_state
    assert relative_error(features, plain.forward_features(x)) < ATOL
    assert torch.equal(model.classifier[1].weight, head)  # the new head is left alone


def test_transformers_refuses_checkpoint_of_another_architecture(tmp_path):
    torch.save(
        {"state_dict": {f"backbone.{k}": v for k, v in timm.create_model("convnext_atto").state_dict().items()}},
        tmp_path / "c.pth",
    )
    with pytest.raises(
        ValueError,
        match=r"into FDConvResNetBackbone: it leaves \d+ .*embedder\.embedder\.convolution\.weight.*stem\.0\.weight.*strict=False",
    ):
        load_official_checkpoint(hf_backbone("resnet18_fdconv"), tmp_path / "c.pth")
    load_official_checkpoint(hf_backbone("resnet18_fdconv"), tmp_path / "c.pth", strict=False)
