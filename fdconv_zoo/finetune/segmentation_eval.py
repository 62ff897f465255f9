"""Segmentation metrics for Trainer: a confusion matrix accumulated batch by batch, then mean IoU and accuracies.

Evaluation memory does not grow with the dataset: each batch's argmax becomes a small confusion matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SegmentationMetrics", "confusion_matrix", "logits_to_predictions", "segmentation_metrics"]


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(num_labels, num_labels) pixel counts, rows = true class, columns = predicted; labels outside
    ``0..num_labels-1`` (255 ignored pixels, -100 padding) are not counted."""
    predictions, labels = (
        torch.as_tensor(predictions),
        torch.as_tensor(labels, device=torch.as_tensor(predictions).device),
    )
    valid = (labels >= 0) & (labels < num_labels)
    index = labels[valid].long() * num_labels + predictions[valid].long()
    return torch.bincount(index, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def segmentation_metrics(confusion: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """``({mean_iou, pixel_accuracy, mean_accuracy}, per-class IoU)`` of a confusion matrix.

    A class that is neither in the labels nor in the predictions has no IoU (NaN) and is left out of the
    means, as in the ``evaluate`` library's ``mean_iou``.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    per_label = confusion.sum(1)
    union = per_label + confusion.sum(0) - true_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positives / union, np.nan)
        accuracy = np.where(per_label > 0, true_positives / per_label, np.nan)
    total = confusion.sum()
    metrics = {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(true_positives.sum() / total) if total else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan"),
    }
    return metrics, iou


class SegmentationMetrics:
    """Trainer ``compute_metrics`` for ``batch_eval_metrics=True``: adds each batch to a confusion matrix and
    reports mean IoU and pixel accuracy at the last batch. ``confusion`` keeps the last evaluation's matrix."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        self._running: torch.Tensor | None = None
        self.confusion: np.ndarray | None = None

    def __call__(self, prediction: Any, compute_result: bool = True) -> dict[str, float]:
        batch = confusion_matrix(prediction.predictions, prediction.label_ids, self.num_labels)
        self._running = batch if self._running is None else self._running + batch
        if not compute_result:
            return {}
        self.confusion, self._running = self._running.cpu().numpy(), None
        return segmentation_metrics(self.confusion)[0]


def logits_to_predictions(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """Class ids at the label resolution (SegFormer's logits are 1/4 size): what the metrics compare."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(1)
