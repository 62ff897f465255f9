"""The Trainer Mask2Former fine-tunes with: the detection Trainer (backbone learning-rate scale, checkpoints
resumed through ``from_pretrained``) evaluating with the class and mask logits and the records' indices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..detection.trainer import detection_trainer

if TYPE_CHECKING:
    from transformers import Trainer

__all__ = ["instance_trainer"]


def instance_trainer(backbone_lr_scale: float) -> type[Trainer]:
    """A Trainer class whose backbone learns at ``backbone_lr_scale`` times the learning rate and whose
    evaluation hands :class:`~.metrics.InstanceMetrics` the logits and the evaluated records' indices."""

    class InstanceSegmentationTrainer(detection_trainer(backbone_lr_scale)):
        def prediction_step(
            self,
            model: nn.Module,
            inputs: dict[str, Any],
            prediction_loss_only: bool,
            ignore_keys: list[str] | None = None,
        ) -> tuple[torch.Tensor | None, Any, Any]:
            inputs = self._prepare_inputs(inputs)
            indices = inputs.pop("record_index")
            with torch.no_grad():
                outputs = model(**inputs)
            loss = outputs.loss.detach() if outputs.loss is not None else None
            if prediction_loss_only:
                return loss, None, None
            return loss, (outputs.class_queries_logits.detach(), outputs.masks_queries_logits.detach()), indices

    return InstanceSegmentationTrainer
