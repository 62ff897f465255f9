"""FDConv Mix Transformer (MiT, the SegFormer encoder) for timm: ``mit_b0_fdconv`` ... ``mit_b5_fdconv``.

timm has no MiT, but its PVT v2 (``PyramidVisionTransformerV2``) is the same network: overlapping patch
embeddings (7x7/4 then 3x3/2), spatial-reduction attention with separate ``q`` and fused ``kv``
projections, and a Mix-FFN (``fc1`` -> 3x3 depthwise conv -> GELU -> ``fc2``) in every block, a LayerNorm
after every stage, average pooling and a linear head. So MiT is built as timm's own PVT v2 class with
MiT's hyper-parameters (MLP ratio 4 in every stage, LayerNorm eps 1e-5 as in transformers' SegFormer),
and everything around it (features_only, forward_intermediates, classifier reset, grad checkpointing,
pretrained loading) is timm's code. FDConv replaces the two Mix-FFN projections of every block
(as the official MiT backbone); the depthwise conv stays plain.

Pretrained tags load NVIDIA's ImageNet-1k MiT checkpoints (``nvidia/mit-b0`` ... ``nvidia/mit-b5``,
transformers-format repos) and convert them exactly at load time; old (transformers <= 5.8) and new key
layouts are both accepted.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm
from timm.models import generate_default_cfgs, register_model
from timm.models.pvt_v2 import PyramidVisionTransformerV2

from ._builder import build_fdconv_model

__all__ = [
    "mit_b0_fdconv",
    "mit_b1_fdconv",
    "mit_b2_fdconv",
    "mit_b3_fdconv",
    "mit_b4_fdconv",
    "mit_b5_fdconv",
    "segformer_to_timm_state_dict",
]

_logger = logging.getLogger(__name__)

MIX_FFN_PATTERNS = ("stages.*.blocks.*.mlp.fc1", "stages.*.blocks.*.mlp.fc2")

# (depths, embed_dims) of MiT-B0..B5 (SegFormer paper, Table 6); heads (1, 2, 5, 8), SR ratios (8, 4, 2, 1).
MIT_ARCHS: dict[str, dict[str, tuple[int, ...]]] = {
    "mit_b0": dict(depths=(2, 2, 2, 2), embed_dims=(32, 64, 160, 256)),
    "mit_b1": dict(depths=(2, 2, 2, 2), embed_dims=(64, 128, 320, 512)),
    "mit_b2": dict(depths=(3, 4, 6, 3), embed_dims=(64, 128, 320, 512)),
    "mit_b3": dict(depths=(3, 4, 18, 3), embed_dims=(64, 128, 320, 512)),
    "mit_b4": dict(depths=(3, 8, 27, 3), embed_dims=(64, 128, 320, 512)),
    "mit_b5": dict(depths=(3, 6, 40, 3), embed_dims=(64, 128, 320, 512)),
}
_MIT_COMMON = dict(num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1), mlp_ratios=(4, 4, 4, 4), qkv_bias=True)

# transformers SegFormer key -> timm PVT v2 key, for both key layouts (<= 5.8 and >= 5.9), after the
# `segformer.` prefix is removed. `{kv}` marks the key and value projections, fused into `attn.kv`.
_BLOCK = r"(?:encoder\.block\.(\d+)\.(\d+)|stages\.(\d+)\.blocks\.(\d+))\."
_KEY_RULES: tuple[tuple[str, str], ...] = (
    (_BLOCK + r"(?:layer_norm_1|layernorm_before)\.", "norm1."),
    (_BLOCK + r"(?:layer_norm_2|layernorm_after)\.", "norm2."),
    (_BLOCK + r"attention\.(?:self\.query|q_proj)\.", "attn.q."),
    (_BLOCK + r"attention\.(?:self\.key|k_proj)\.", "attn.{kv}0."),
    (_BLOCK + r"attention\.(?:self\.value|v_proj)\.", "attn.{kv}1."),
    (_BLOCK + r"attention\.(?:self\.sr|sequence_reduction\.sequence_reduction)\.", "attn.sr."),
    (_BLOCK + r"attention\.(?:self\.layer_norm|sequence_reduction\.layer_norm)\.", "attn.norm."),
    (_BLOCK + r"attention\.(?:output\.dense|o_proj)\.", "attn.proj."),
    (_BLOCK + r"mlp\.(?:dense1|fc1)\.", "mlp.fc1."),
    (_BLOCK + r"mlp\.dwconv\.dwconv\.", "mlp.dwconv."),
    (_BLOCK + r"mlp\.(?:dense2|fc2)\.", "mlp.fc2."),
)
_EMBED = re.compile(r"(?:encoder\.patch_embeddings\.(\d+)|stages\.(\d+)\.patch_embeddings)\.(proj|layer_norm)\.(\w+)$")
_STAGE_NORM = re.compile(r"(?:encoder\.layer_norm\.(\d+)|stages\.(\d+)\.layer_norm)\.(\w+)$")


def _first(*groups: str | None) -> str:
    return next(g for g in groups if g is not None)


def _timm_key(key: str) -> str | None:
    """The PVT v2 name of one SegFormer encoder/classifier key (``{kv}`` marks a k/v half); None if not one."""
    key = key.removeprefix("segformer.")
    if key.startswith("classifier."):
        return "head." + key.removeprefix("classifier.")
    if m := _EMBED.match(key):
        stage, part, leaf = int(_first(m[1], m[2])), m[3], m[4]
        module = "patch_embed" if stage == 0 else f"stages.{stage}.downsample"
        return f"{module}.{'proj' if part == 'proj' else 'norm'}.{leaf}"
    if m := _STAGE_NORM.match(key):
        return f"stages.{_first(m[1], m[2])}.norm.{m[3]}"
    for pattern, replacement in _KEY_RULES:
        if m := re.match(pattern + r"(\w+)$", key):
            stage, block = _first(m[1], m[3]), _first(m[2], m[4])
            return f"stages.{stage}.blocks.{block}.{replacement}{m[5]}"
    return None


def segformer_to_timm_state_dict(
    state_dict: dict[str, torch.Tensor], model: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Map a transformers SegFormer/MiT state dict (either key layout) to timm PVT v2 / MiT names.

    The separate key and value projections are concatenated into ``attn.kv`` (keys first, as PVT v2
    splits them); the decode head of segmentation checkpoints is dropped. Checkpoints already in timm
    layout pass through. Raises ``ValueError`` if the state dict is not a SegFormer/MiT one.
    """
    if "patch_embed.proj.weight" in state_dict:
        return state_dict
    out: dict[str, torch.Tensor] = {}
    kv_parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown, decode_head = [], 0
    for key, value in state_dict.items():
        target = _timm_key(key)
        if target is None:
            if key.startswith("decode_head."):
                decode_head += 1
            else:
                unknown.append(key)
        elif "{kv}" in target:
            prefix, half = target.split("{kv}")
            kv_parts.setdefault(prefix + "kv" + half[1:], {})[half[0]] = value
        else:
            out[target] = value
    if unknown or not out:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        source = cfg.get("hf_hub_id") or cfg.get("file") or "the checkpoint"
        found = f"unrecognised keys {unknown[:5]}{' ...' if len(unknown) > 5 else ''}" if unknown else "no encoder keys"
        raise ValueError(f"{source} is not a SegFormer/MiT (transformers) checkpoint: {found}")
    for target, halves in kv_parts.items():
        if set(halves) != {"0", "1"}:
            raise ValueError(f"checkpoint has only the {'key' if '0' in halves else 'value'} projection for {target}")
        out[target] = torch.cat([halves["0"], halves["1"]], 0)
    if decode_head:
        _logger.info("dropped %d decode-head keys of a SegFormer segmentation checkpoint", decode_head)
    return out


def _create_mit_fdconv(variant: str, pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_fdconv_model(
        PyramidVisionTransformerV2,
        variant,
        pretrained,
        fdconv_patterns=MIX_FFN_PATTERNS,
        base_filter_fn=segformer_to_timm_state_dict,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(hub_id: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "hf_hub_id": hub_id,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "other",
        "notes": (
            f"ImageNet-1k MiT weights of {hub_id} (NVIDIA Source Code License for SegFormer), "
            "Mix-FFN projections converted to FDConv at load time (exact).",
        ),
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {f"{arch}_fdconv.in1k": _cfg(f"nvidia/{arch.replace('_', '-')}") for arch in MIT_ARCHS}
)


def _mit_args(arch: str, **kwargs: Any) -> dict[str, Any]:
    # transformers' SegFormer uses nn.LayerNorm's default eps (1e-5) everywhere; PVT v2's blocks use 1e-6.
    return dict(MIT_ARCHS[arch], **_MIT_COMMON, norm_layer=partial(LayerNorm, eps=1e-5), **kwargs)


@register_model
def mit_b0_fdconv(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B0 (SegFormer-B0 encoder, 3.7M parameters before FDConv) with FDConv Mix-FFN projections."""
    return _create_mit_fdconv("mit_b0_fdconv", pretrained, **_mit_args("mit_b0", **kwargs))


@register_model
def mit_b1_fdconv(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B1 with FDConv Mix-FFN projections."""
    return _create_mit_fdconv("mit_b1_fdconv", pretrained, **_mit_args("mit_b1", **kwargs))


@register_model
def mit_b2_fdconv(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B2 with FDConv Mix-FFN projections."""
    return _create_mit_fdconv("mit_b2_fdconv", pretrained, **_mit_args("mit_b2", **kwargs))


@register_model
def mit_b3_fdconv(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B3 with FDConv Mix-FFN projections."""
    return _create_mit_fdconv("mit_b3_fdconv", pretrained, **_mit_args("mit_b3", **kwargs))


@register_model
def mit_b4_fdconv(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B4 with FDConv Mix-FFN projections."""
    return _create_mit_fdconv("mit_b4_fdconv", pretrained, **_mit_args("mit_b4", **kwargs))


@register_model
def mit_b5_fdconv(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV2:
    """MiT-B5 with FDConv Mix-FFN projections."""
    return _create_mit_fdconv("mit_b5_fdconv", pretrained, **_mit_args("mit_b5", **kwargs))
