"""From :class:`~fdconv_zoo.finetune.coco_data.CocoImage` records to Mask2Former inputs: the image through the
image processor (square resize, the backbone's normalisation), each non-crowd object's mask resized with it
(nearest) as ``mask_labels`` with its ``class_labels``; training adds a horizontal flip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..coco_data import CocoImage
from ..detection.inputs import collate_with_lists
from ..images import to_model_image
from .masks import instance_masks

__all__ = ["InstanceInputs", "collate", "image_processor"]


def image_processor(size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """Mask2Former's processor at ``size`` x ``size`` (a multiple of 32, so nothing is padded), normalising with
    the backbone's statistics."""
    from transformers import Mask2FormerImageProcessor

    return Mask2FormerImageProcessor(
        size={"height": size, "width": size}, do_normalize=True, image_mean=list(mean), image_std=list(std)
    )


class InstanceInputs(torch.utils.data.Dataset):
    """``records`` as ``{"pixel_values", "mask_labels", "class_labels"}`` examples; ``flip_seed`` (training)
    flips half of them, repeatably. ``with_index`` adds ``record_index``, which the evaluation uses to score
    against the original-size masks."""

    def __init__(
        self, records: Sequence[CocoImage], processor: Any, *, flip_seed: int | None = None, with_index: bool = False
    ) -> None:
        self.records, self.processor = list(records), processor
        self.flip_seed, self.with_index = flip_seed, with_index
        self._draws = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = np.array(to_model_image(record.open(), 3))
        kept = [i for i, obj in enumerate(record.objects) if not obj.iscrowd]  # crowd regions only matter to COCO AP
        masks = instance_masks(record)[kept]
        if self.flip_seed is not None:
            self._draws += 1
            if np.random.default_rng((self.flip_seed, index, self._draws)).random() < 0.5:
                image, masks = image[:, ::-1].copy(), masks[:, :, ::-1].copy()
        pixel_values = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        size = tuple(pixel_values.shape[-2:])
        resized = torch.zeros((0, *size))  # interpolate refuses an image without objects
        if len(masks):
            resized = F.interpolate(torch.from_numpy(masks)[None].float(), size=size, mode="nearest")[0]
        example = {
            "pixel_values": pixel_values,
            "mask_labels": resized,
            "class_labels": torch.tensor([record.objects[i].label for i in kept], dtype=torch.long),
        }
        if self.with_index:
            example["record_index"] = index
        return example


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stacked; masks and classes stay lists (their instance counts differ)."""
    return collate_with_lists(examples, ("mask_labels", "class_labels"))
