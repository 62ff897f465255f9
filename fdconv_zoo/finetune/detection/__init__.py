"""Object detection fine-tuning: transformers' RT-DETRv2 (or D-FINE, DETR) on an FDConv timm backbone.

:func:`finetune_detection` is the API behind ``fdconv-zoo finetune-detection``; the COCO data layer it
reads with is :mod:`fdconv_zoo.finetune.coco_data`.
"""

from .finetune import DetectionFinetuneResult, finetune_detection
from .metrics import DetectionMetrics
from .model import (
    DETECTORS,
    backbone_of,
    build_detector,
    freeze_backbone_defaults,
    load_backbone_source,
    load_backbone_weights,
)

__all__ = [
    "DETECTORS",
    "DetectionFinetuneResult",
    "DetectionMetrics",
    "backbone_of",
    "build_detector",
    "finetune_detection",
    "freeze_backbone_defaults",
    "load_backbone_source",
    "load_backbone_weights",
]
