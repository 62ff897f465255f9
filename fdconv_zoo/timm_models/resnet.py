"""FDConv ResNets for timm: the official ResNet_FDConv backbone.

Every residual-block convolution is an FDConv (BasicBlock conv1/conv2, Bottleneck conv1/conv2/conv3; the
3x3 ones carry Frequency Band Modulation); the stem and the downsample projections stay plain
convolutions, as in the official backbone. Paper settings (``kernel_num=64``). Pretrained tags are
timm's ResNet tags, converted exactly at load time: ``timm.create_model('resnet50_fdconv.tv_in1k',
pretrained=True)`` computes the same logits as ``resnet50.tv_in1k`` until the attentions are trained.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ._builder import build_fdconv_model, fdconv_pretrained_cfgs

__all__ = ["resnet18_fdconv", "resnet34_fdconv", "resnet50_fdconv", "resnet101_fdconv", "resnet152_fdconv"]

_FDCONV_PATTERNS: dict[type[nn.Module], tuple[str, ...]] = {
    BasicBlock: ("layer*.*.conv1", "layer*.*.conv2"),
    Bottleneck: ("layer*.*.conv1", "layer*.*.conv2", "layer*.*.conv3"),
}


def _create_resnet_fdconv(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNet:
    return build_fdconv_model(ResNet, variant, pretrained, fdconv_patterns=_FDCONV_PATTERNS[kwargs["block"]], **kwargs)


default_cfgs = generate_default_cfgs(
    fdconv_pretrained_cfgs(["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
)


@register_model
def resnet18_fdconv(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 with FDConv residual blocks."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_resnet_fdconv("resnet18_fdconv", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet34_fdconv(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34 with FDConv residual blocks."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_resnet_fdconv("resnet34_fdconv", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_fdconv(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50 with FDConv residual blocks (the paper's backbone, +3.65M parameters)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_resnet_fdconv("resnet50_fdconv", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet101_fdconv(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101 with FDConv residual blocks."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3))
    return _create_resnet_fdconv("resnet101_fdconv", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet152_fdconv(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-152 with FDConv residual blocks."""
    model_args = dict(block=Bottleneck, layers=(3, 8, 36, 3))
    return _create_resnet_fdconv("resnet152_fdconv", pretrained, **dict(model_args, **kwargs))
