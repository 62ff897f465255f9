"""Official FDConv ResNet checkpoints into the transformers FDConv ResNets.

The official backbone (mmdet's ``ResNet_FDConv``) and its converted ImageNet initialisation
(``resnet50_Convert2FDConv.pth``) use torchvision's ResNet names (``conv1``, ``layer3.2.conv2.dft_weight``, ...),
detector checkpoints with a ``backbone.`` prefix; transformers' ResNet names the same modules
``embedder.embedder.convolution``, ``encoder.stages.2.layers.2.layer.1.convolution``, ...
:func:`load_official_checkpoint` maps the names and loads, refusing a checkpoint that does not set every
tensor of the backbone.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import torch

from ..conversion import convert_state_dict
from ..official_checkpoints import backbone_state_dict, check_fills_model, read_checkpoint
from .resnet import FDConvResNetBackbone, FDConvResNetForImageClassification, FDConvResNetModel

__all__ = ["load_official_checkpoint", "official_to_transformers_resnet_key"]

_logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", FDConvResNetBackbone, FDConvResNetModel, FDConvResNetForImageClassification)

_STEM = {"conv1": "embedder.embedder.convolution", "bn1": "embedder.embedder.normalization"}
_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(conv|bn)(\d)\.(.+)")
_SHORTCUT = re.compile(r"layer(\d+)\.(\d+)\.downsample\.([01])\.(.+)")
_CLASSIFIER = "fc."


def official_to_transformers_resnet_key(key: str) -> str | None:
    """transformers' name for an official (torchvision-layout) ResNet key, ``None`` if it has none."""
    module, _, leaf = key.partition(".")
    if module in _STEM:
        return f"{_STEM[module]}.{leaf}"
    if m := _BLOCK.fullmatch(key):
        stage, block, kind, index, rest = m.groups()
        part = "convolution" if kind == "conv" else "normalization"
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.layer.{int(index) - 1}.{part}.{rest}"
    if m := _SHORTCUT.fullmatch(key):
        stage, block, index, rest = m.groups()
        part = "convolution" if index == "0" else "normalization"
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.shortcut.{part}.{rest}"
    return None


def load_official_checkpoint(
    model: ModelT, checkpoint: str | os.PathLike | Mapping[str, Any], *, strict: bool = True
) -> ModelT:
    """Load an official FDConv ResNet checkpoint into a transformers FDConv ResNet; returns ``model``.

    ``checkpoint`` is a file (``.pth`` read with ``weights_only=True``, or ``.safetensors``) or its loaded
    contents: an mmdet/mmseg detector or segmentor checkpoint (its ``backbone.`` keys; necks and heads are
    dropped), a converted ImageNet ResNet (``resnet50_Convert2FDConv.pth``: ``dft_weight`` spectra, its
    attentions start neutral) or a plain torchvision/timm ResNet (converted exactly). Only the backbone is
    loaded: the classifier of an ``FDConvResNetForImageClassification`` stays as it is. With ``strict``
    (default) a checkpoint that leaves any backbone tensor unset, or holds keys the backbone lacks, raises
    ``ValueError`` with the counts and the first such keys; ``strict=False`` loads what matches.
    """
    name = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "the checkpoint"
    contents = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    backbone = model.resnet if isinstance(model, FDConvResNetForImageClassification) else model
    state_dict: dict[str, Any] = {}
    for key, value in backbone_state_dict(contents).items():
        if not key.startswith(_CLASSIFIER):
            # unknown keys keep their names, so the completeness check reports them
            state_dict[official_to_transformers_resnet_key(key) or key] = value
    converted = convert_state_dict(state_dict, backbone)
    if strict:
        check_fills_model(
            converted,
            backbone,
            source=state_dict,
            checkpoint_name=name,
            model_name=type(model).__name__,
            opt_out="pass strict=False",
        )
    with torch.no_grad():
        result = backbone.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        _logger.warning(
            "loaded %s non-strictly: %d tensors unset, %d keys unused",
            name,
            len(result.missing_keys),
            len(result.unexpected_keys),
        )
    return model
