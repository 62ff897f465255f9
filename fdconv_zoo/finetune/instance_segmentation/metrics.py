"""COCO mask and box AP of Mask2Former's predictions, batch by batch, with torchmetrics on faster-coco-eval.

Predictions go through the image processor's ``post_process_instance_segmentation`` (the call users make) at
each image's original size; targets are the original masks of the evaluation records, crowd regions flagged
``iscrowd`` so that COCO ignores detections on them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from ..coco_data import CocoImage
from ..detection.metrics import SUMMARY_KEYS, per_class_scores
from .masks import instance_masks, mask_boxes

__all__ = ["SUMMARY_KEYS", "InstanceMetrics"]  # SUMMARY_KEYS: torchmetrics' names, each for "segm" and "bbox"


class InstanceMetrics:
    """Trainer's ``compute_metrics`` with ``batch_eval_metrics=True``: accumulates, then returns COCO AP.

    The result has ``segm_<key>`` and ``bbox_<key>`` for :data:`SUMMARY_KEYS` and ``segm_map_<class name>``
    for every class present in targets or predictions; ``per_class`` keeps the last per-class mask APs.
    """

    def __init__(self, processor: Any, id2label: Mapping[int, str], records: Sequence[CocoImage]) -> None:
        self.processor, self.id2label, self.records = processor, dict(id2label), list(records)
        self.per_class: dict[str, float] = {}
        self._metric = self._new_metric()

    @staticmethod
    def _new_metric() -> Any:
        from torchmetrics.detection import MeanAveragePrecision

        logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # it logs a COCO summary per class at INFO
        return MeanAveragePrecision(
            box_format="xyxy", iou_type=("bbox", "segm"), class_metrics=True, backend="faster_coco_eval"
        )

    def __call__(self, prediction: Any, compute_result: bool = True) -> dict[str, float]:
        class_logits, mask_logits = prediction.predictions
        records = [self.records[int(i)] for i in prediction.label_ids]
        outputs = SimpleNamespace(
            class_queries_logits=class_logits.float().cpu(), masks_queries_logits=mask_logits.float().cpu()
        )
        sizes = [(r.height, r.width) for r in records]
        results = self.processor.post_process_instance_segmentation(
            outputs, threshold=0.0, target_sizes=sizes, return_binary_maps=True
        )
        self._metric.update(
            [_prediction(r, s) for r, s in zip(results, sizes, strict=True)], [_target(r) for r in records]
        )
        if not compute_result:
            return {}
        return self._compute()

    def _compute(self) -> dict[str, float]:
        result = self._metric.compute()
        self._metric = self._new_metric()
        scores = {f"{kind}_{key}": float(result[f"{kind}_{key}"]) for kind in ("segm", "bbox") for key in SUMMARY_KEYS}
        self.per_class = per_class_scores(result, "segm_map_per_class", self.id2label)
        scores.update({f"segm_map_{name}": value for name, value in self.per_class.items()})
        return scores


def _prediction(result: Mapping[str, Any], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    segments = result["segments_info"]
    if not segments:  # the processor then returns a map of -1, not binary masks
        masks = torch.zeros((0, *size), dtype=torch.bool)
    else:
        masks = result["segmentation"].bool().cpu()
    return {
        "masks": masks,
        "boxes": mask_boxes(masks),
        "scores": torch.tensor([s["score"] for s in segments], dtype=torch.float32),
        "labels": torch.tensor([s["label_id"] for s in segments], dtype=torch.long),
    }


def _target(record: CocoImage) -> dict[str, torch.Tensor]:
    masks = torch.from_numpy(instance_masks(record))
    return {
        "masks": masks,
        "boxes": mask_boxes(masks),
        "labels": torch.tensor([obj.label for obj in record.objects], dtype=torch.long),
        "iscrowd": torch.tensor([int(obj.iscrowd) for obj in record.objects], dtype=torch.long),
    }
