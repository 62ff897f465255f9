"""Mask2Former on an FDConv backbone: transformers' ``Mask2FormerForUniversalSegmentation`` reading four feature
maps (strides 4-32) of a timm FDConv model or of a zoo transformers backbone (ResNet, ConvNeXt, Swin), with the
backbone's weights loaded strictly and checked by the detection command's loader."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from ..detection.model import BackboneSource, backbone_of, feature_layout, load_backbone_weights
from ..errors import FinetuneInputError

__all__ = ["FEATURE_MAPS", "build_mask2former"]

_logger = logging.getLogger(__name__)

FEATURE_STRIDES = (4, 8, 16, 32)  # Mask2Former's pixel decoder reads these
FEATURE_MAPS = len(FEATURE_STRIDES)


def build_mask2former(source: BackboneSource, id2label: Mapping[int, str], **config_overrides: Any) -> nn.Module:
    """Mask2Former for the classes ``id2label`` on ``source``'s architecture, its backbone holding ``source``'s
    weights (every tensor checked); ``config_overrides`` go into ``Mask2FormerConfig``.

    ``source`` must have been loaded with ``feature_maps=FEATURE_MAPS`` when it is a transformers backbone."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, TimmBackboneConfig

    unknown = sorted(set(config_overrides) - {f.name for f in dataclasses.fields(Mask2FormerConfig)})
    if unknown:
        raise FinetuneInputError(f"Mask2FormerConfig has no field {', '.join(unknown)}: check the --model-arg names")
    if source.backbone_config is not None:
        backbone = copy.deepcopy(source.backbone_config)
    else:
        indices, _ = feature_layout(source.architecture, FEATURE_STRIDES)
        backbone = TimmBackboneConfig(backbone=source.architecture, out_indices=indices)
    config = Mask2FormerConfig(
        backbone_config=backbone,
        id2label=dict(id2label),
        label2id={v: k for k, v in id2label.items()},
        **config_overrides,
    )
    # transformers warns that only Swin is a "supported" backbone; any backbone with these four maps works.
    model = Mask2FormerForUniversalSegmentation(config)
    if source.state_dict is not None:
        load_backbone_weights(backbone_of(model), source.state_dict)
        _logger.info("loaded %s's weights into Mask2Former's backbone (every tensor checked)", source.name)
    return model
