"""Instance masks from the compressed RLEs :func:`~fdconv_zoo.finetune.coco_data.load_coco_dataset` keeps with
``masks=True``, decoded by faster-coco-eval (pycocotools' API), and boxes around predicted masks."""

from __future__ import annotations

import numpy as np
import torch

from ..coco_data import CocoImage

__all__ = ["instance_masks", "mask_boxes"]


def instance_masks(record: CocoImage) -> np.ndarray:
    """``record``'s object masks, ``(objects, height, width)`` bool, in the order of ``record.objects``."""
    from faster_coco_eval.core import mask as mask_utils

    if not record.objects:
        return np.zeros((0, record.height, record.width), dtype=bool)
    decoded = mask_utils.decode([obj.segmentation for obj in record.objects])  # (height, width, objects)
    return np.ascontiguousarray(decoded.transpose(2, 0, 1).astype(bool))


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Corner boxes ``(x0, y0, x1, y1)`` in pixels around ``(n, height, width)`` masks (empty masks: zeros)."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    for i, mask in enumerate(masks):
        rows, columns = torch.where(mask)
        if rows.numel():
            boxes[i] = torch.stack([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1]).float()
    return boxes
