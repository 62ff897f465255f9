"""From :class:`~fdconv_zoo.finetune.coco_data.CocoImage` records to detector inputs: RGB images, albumentations
augmentation (training only), and the detector's image processor (resize, ImageNet normalisation, boxes as
normalised centre/size with ``class_labels``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..coco_data import CocoImage
from ..images import to_model_image

__all__ = [
    "DetectionInputs",
    "collate",
    "collate_with_lists",
    "image_processor",
    "round_image_size",
    "train_augmentation",
]

_logger = logging.getLogger(__name__)

SIZE_MULTIPLE = 32  # RT-DETR's feature pyramid fails on other sizes


def round_image_size(size: int) -> int:
    """``size`` rounded to the nearest multiple of 32 (at least 32), logged when it changes."""
    rounded = max(SIZE_MULTIPLE, SIZE_MULTIPLE * round(size / SIZE_MULTIPLE))
    if rounded != size:
        _logger.info("image size %d rounded to %d (detectors need multiples of %d)", size, rounded, SIZE_MULTIPLE)
    return rounded


def image_processor(detector: str, size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """The detector's processor at ``size`` x ``size``, normalising with the backbone's statistics
    (RTDetrImageProcessor does not normalise by default; ImageNet backbones need it)."""
    from transformers import DetrImageProcessor, RTDetrImageProcessor

    processor_class = DetrImageProcessor if detector == "detr" else RTDetrImageProcessor
    return processor_class(
        size={"height": size, "width": size},
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_pad=False,
    )


def train_augmentation(seed: int) -> Any:
    """Flips, photometric jitter and a mild affine; boxes that end up degenerate are filtered out. ``seed``
    makes the draws repeatable (albumentations keeps its own generator)."""
    import albumentations as A

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(p=0.5),
            A.HueSaturationValue(p=0.3),
            A.Affine(scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), p=0.5),
        ],
        bbox_params=A.BboxParams(
            format="coco", label_fields=["labels"], clip=True, min_area=1.0, filter_invalid_bboxes=True
        ),
        seed=seed,
    )


class DetectionInputs(torch.utils.data.Dataset):
    """``records`` as ``{"pixel_values", "labels"}`` examples; ``augment`` (albumentations) only for training.
    ``with_index`` adds ``record_index``, by which the evaluation finds each image's annotations: a tensor that
    ``torchrun`` processes can gather, where the targets' box counts differ from image to image."""

    def __init__(
        self, records: Sequence[CocoImage], processor: Any, augment: Any = None, *, with_index: bool = False
    ) -> None:
        self.records, self.processor, self.augment, self.with_index = list(records), processor, augment, with_index

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = np.array(to_model_image(record.open(), 3))  # writable: the processor makes a tensor of it
        boxes = [list(obj.bbox) for obj in record.objects]
        labels = [obj.label for obj in record.objects]
        if self.augment is not None:
            out = self.augment(image=image, bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels=labels)
            image, boxes, labels = out["image"], [list(map(float, b)) for b in out["bboxes"]], list(out["labels"])
        annotations = {
            "image_id": record.image_id,
            "annotations": [
                {"bbox": box, "category_id": int(label), "area": box[2] * box[3], "iscrowd": 0}
                for box, label in zip(boxes, labels, strict=True)
            ],
        }
        encoded = self.processor(images=image, annotations=annotations, return_tensors="pt")
        example = {"pixel_values": encoded["pixel_values"][0], "labels": encoded["labels"][0]}
        if self.with_index:
            example["record_index"] = index
        return example


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stacked; targets stay a list of dicts (their box counts differ)."""
    return collate_with_lists(examples, ("labels",))


def collate_with_lists(examples: list[dict[str, Any]], list_keys: Sequence[str]) -> dict[str, Any]:
    """``pixel_values`` stacked, each of ``list_keys`` kept as a list (per-image object counts differ), and the
    evaluation's ``record_index`` as one tensor where the examples have it."""
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    batch.update({key: [e[key] for e in examples] for key in list_keys})
    if "record_index" in examples[0]:
        batch["record_index"] = torch.tensor([e["record_index"] for e in examples])
    return batch
