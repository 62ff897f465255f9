"""The Trainer detectors fine-tune with: a lower learning rate for the backbone, checkpoints resumed with their
key conversions, and evaluation that hands the metrics only the class logits and boxes (not the auxiliary and
denoising outputs) and the evaluated records' indices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..segmentation_model import checkpoint_converting_trainer
from .model import backbone_of

if TYPE_CHECKING:
    from transformers import Trainer

__all__ = ["detection_trainer"]


def detection_trainer(backbone_lr_scale: float) -> type[Trainer]:
    """A Trainer class whose backbone parameters learn at ``backbone_lr_scale`` times the learning rate (RT-DETR
    and mmdet use 0.1), resuming checkpoints through ``from_pretrained``; a function, so transformers is
    imported only when used."""

    # Resuming goes through from_pretrained: RT-DETR's checkpoints are saved in the Hub's original key layout,
    # which Trainer's own non-strict load_state_dict would silently miss.
    class DetectionTrainer(checkpoint_converting_trainer()):
        def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
            model = self.model if model is None else model
            if self.optimizer is None:
                backbone = {id(p) for p in backbone_of(model).parameters()}
                decay = set(self.get_decay_parameter_names(model))
                groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
                for name, parameter in model.named_parameters():
                    if parameter.requires_grad:
                        groups.setdefault((id(parameter) in backbone, name in decay), []).append(parameter)
                optimizer_class, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
                self.optimizer = optimizer_class(
                    [
                        {
                            "params": params,
                            "lr": self.args.learning_rate * (backbone_lr_scale if in_backbone else 1.0),
                            "weight_decay": self.args.weight_decay if decays else 0.0,
                        }
                        for (in_backbone, decays), params in sorted(groups.items())
                    ],
                    **{k: v for k, v in kwargs.items() if k != "lr"},
                )
            return super().create_optimizer(model)

        # What evaluation hands the metrics, besides the records' indices.
        prediction_outputs = ("logits", "pred_boxes")

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
            return loss, tuple(getattr(outputs, name).detach() for name in self.prediction_outputs), indices

    return DetectionTrainer
