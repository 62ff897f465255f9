"""COCO mAP of a detector's predictions, batch by batch, with torchmetrics on the faster-coco-eval backend.

Predictions go through the image processor's ``post_process_object_detection`` (the same call users make) at
each image's original size; targets are the evaluation records' boxes, in the same pixels. The evaluation hands
over record indices rather than targets: under ``torchrun`` they are gathered from every process as one tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from ..coco_data import CocoImage

__all__ = ["SUMMARY_KEYS", "DetectionMetrics", "per_class_scores"]

# torchmetrics' names; -1 means "no such objects" (COCO's convention), e.g. no small boxes.
SUMMARY_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


class DetectionMetrics:
    """Trainer's ``compute_metrics`` with ``batch_eval_metrics=True``: accumulates, then returns COCO mAP.

    The result has :data:`SUMMARY_KEYS` and ``map_<class name>`` for every class present in the targets
    or predictions. ``per_class`` keeps the last per-class APs by name.
    """

    def __init__(self, processor: Any, id2label: Mapping[int, str], records: Sequence[CocoImage]) -> None:
        self.processor, self.id2label, self.records = processor, dict(id2label), list(records)
        self.per_class: dict[str, float] = {}
        self._metric = self._new_metric()

    @staticmethod
    def _new_metric() -> Any:
        from torchmetrics.detection import MeanAveragePrecision

        logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # it logs a COCO summary per class at INFO
        return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="faster_coco_eval")

    def __call__(self, prediction: Any, compute_result: bool = True) -> dict[str, float]:
        logits, boxes = prediction.predictions
        records = [self.records[int(i)] for i in prediction.label_ids]
        sizes = [(r.height, r.width) for r in records]
        outputs = SimpleNamespace(logits=logits.float().cpu(), pred_boxes=boxes.float().cpu())
        detections = self.processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        self._metric.update(
            [{k: d[k].cpu() for k in ("boxes", "scores", "labels")} for d in detections],
            [_target(r) for r in records],
        )
        if not compute_result:
            return {}
        return self._compute()

    def _compute(self) -> dict[str, float]:
        result = self._metric.compute()
        self._metric = self._new_metric()
        scores = {key: float(result[key]) for key in SUMMARY_KEYS}
        self.per_class = per_class_scores(result, "map_per_class", self.id2label)
        scores.update({f"map_{name}": value for name, value in self.per_class.items()})
        return scores


def per_class_scores(result: Mapping[str, torch.Tensor], key: str, id2label: Mapping[int, str]) -> dict[str, float]:
    """Class name -> the per-class score ``key`` of a torchmetrics ``MeanAveragePrecision`` result."""
    classes = result["classes"].reshape(-1).tolist()
    scores = result[key].reshape(-1).tolist()
    return {id2label.get(int(c), str(c)): float(v) for c, v in zip(classes, scores, strict=True)}


def _target(record: CocoImage) -> dict[str, torch.Tensor]:
    """A record's objects as corner boxes (x1, y1, x2, y2) in pixels with their labels."""
    boxes = torch.tensor([obj.bbox for obj in record.objects], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return {"boxes": boxes, "labels": torch.tensor([obj.label for obj in record.objects], dtype=torch.long)}
