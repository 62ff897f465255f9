"""FDConv ConvNeXts for timm: the two MLP projections of every block (``mlp.fc1``, ``mlp.fc2``) are FDConv.

With the default channels-last MLP these are token-layout FDConv layers (drop-ins for ``nn.Linear``
on ``(B, H, W, C)``); ``conv_mlp`` models (ConvNeXt-Atto) get 1x1 NCHW FDConv. Depthwise 7x7 convs,
stem and downsample layers stay plain (FDConv needs groups=1 and k in {1, 3}). Paper settings
(``kernel_num=64``). Pretrained tags are timm's ConvNeXt ImageNet tags, converted exactly at load time.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt, checkpoint_filter_fn

from ._builder import build_fdconv_model, fdconv_pretrained_cfgs

__all__ = ["convnext_atto_fdconv", "convnext_tiny_fdconv", "convnext_small_fdconv", "convnext_base_fdconv"]

_FDCONV_PATTERNS = ("stages.*.blocks.*.mlp.fc1", "stages.*.blocks.*.mlp.fc2")


def _create_convnext_fdconv(variant: str, pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    return build_fdconv_model(
        ConvNeXt,
        variant,
        pretrained,
        fdconv_patterns=_FDCONV_PATTERNS,
        base_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    fdconv_pretrained_cfgs(["convnext_atto", "convnext_tiny", "convnext_small", "convnext_base"])
)


@register_model
def convnext_atto_fdconv(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-Atto (conv MLP) with FDConv MLP projections."""
    model_args = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True)
    return _create_convnext_fdconv("convnext_atto_fdconv", pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_tiny_fdconv(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-T with FDConv MLP projections."""
    model_args = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
    return _create_convnext_fdconv("convnext_tiny_fdconv", pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_small_fdconv(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-S with FDConv MLP projections."""
    model_args = dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
    return _create_convnext_fdconv("convnext_small_fdconv", pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_base_fdconv(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-B with FDConv MLP projections."""
    model_args = dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
    return _create_convnext_fdconv("convnext_base_fdconv", pretrained, **dict(model_args, **kwargs))
