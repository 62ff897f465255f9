"""Instance segmentation fine-tuning: transformers' Mask2Former on an FDConv backbone (timm, or the zoo's
transformers ResNet, ConvNeXt and Swin).

:func:`finetune_instance_segmentation` is the API behind ``fdconv-zoo finetune-instance-segmentation``; it
reads COCO data with masks through :mod:`fdconv_zoo.finetune.coco_data` and reuses the detection command's
backbone loading, freezing and Trainer.
"""

from .finetune import InstanceSegmentationFinetuneResult, finetune_instance_segmentation
from .metrics import InstanceMetrics
from .model import build_mask2former

__all__ = [
    "InstanceMetrics",
    "InstanceSegmentationFinetuneResult",
    "build_mask2former",
    "finetune_instance_segmentation",
]
