"""The Trainer Mask2Former fine-tunes with: the detection Trainer (backbone learning-rate scale, checkpoints
resumed through ``from_pretrained``) evaluating with the class and mask logits and the records' indices."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..detection.trainer import detection_trainer

if TYPE_CHECKING:
    from transformers import Trainer

__all__ = ["instance_trainer"]


def instance_trainer(backbone_lr_scale: float) -> type[Trainer]:
    """A Trainer class whose backbone learns at ``backbone_lr_scale`` times the learning rate and whose
    evaluation hands :class:`~.metrics.InstanceMetrics` the logits and the evaluated records' indices."""

    class InstanceSegmentationTrainer(detection_trainer(backbone_lr_scale)):
        prediction_outputs = ("class_queries_logits", "masks_queries_logits")

    return InstanceSegmentationTrainer
