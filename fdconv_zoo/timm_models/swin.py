"""FDConv Swin Transformers for timm: the two MLP projections of every block (``mlp.fc1``, ``mlp.fc2``) are
token-layout FDConv layers, whose global descriptor is the mean over all tokens of the image.

Attention, patch embedding and patch merging stay plain. Paper settings (``kernel_num=64``). Features
keep timm's NHWC layout. Pretrained tags are timm's Swin ImageNet tags, converted exactly at load time.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn

from ._builder import build_fdconv_model, fdconv_pretrained_cfgs

__all__ = [
    "swin_tiny_patch4_window7_224_fdconv",
    "swin_small_patch4_window7_224_fdconv",
    "swin_base_patch4_window7_224_fdconv",
]

_FDCONV_PATTERNS = ("layers.*.blocks.*.mlp.fc1", "layers.*.blocks.*.mlp.fc2")


def _create_swin_fdconv(variant: str, pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    # as timm's _create_swin_transformer: one feature per stage by default
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (1, 1, 3, 1))))))
    return build_fdconv_model(
        SwinTransformer,
        variant,
        pretrained,
        fdconv_patterns=_FDCONV_PATTERNS,
        base_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    fdconv_pretrained_cfgs(
        ["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224"]
    )
)


@register_model
def swin_tiny_patch4_window7_224_fdconv(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-T @ 224x224 with FDConv MLP projections."""
    model_args = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
    return _create_swin_fdconv("swin_tiny_patch4_window7_224_fdconv", pretrained, **dict(model_args, **kwargs))


@register_model
def swin_small_patch4_window7_224_fdconv(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-S @ 224x224 with FDConv MLP projections."""
    model_args = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
    return _create_swin_fdconv("swin_small_patch4_window7_224_fdconv", pretrained, **dict(model_args, **kwargs))


@register_model
def swin_base_patch4_window7_224_fdconv(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-B @ 224x224 with FDConv MLP projections."""
    model_args = dict(patch_size=4, window_size=7, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
    return _create_swin_fdconv("swin_base_patch4_window7_224_fdconv", pretrained, **dict(model_args, **kwargs))
