"""The numeric options of the COCO-scored fine-tunes (detection, instance segmentation), checked before any work,
so that the Python API refuses what the command line's argument types refuse."""

from __future__ import annotations

import math

from ..errors import FinetuneInputError
from .inputs import round_image_size

__all__ = ["FROZEN_STAGES", "checked_backbone_options"]

FROZEN_STAGES = (-1, 0, 1, 2, 3, 4)  # mmdet's frozen_stages: -1 freezes nothing, 0 the stem, n the stem and n stages


def checked_backbone_options(image_size: int, backbone_lr_scale: float, frozen_stages: int) -> int:
    """Refuse a non-positive image size or learning-rate scale and an unknown ``frozen_stages``; return the image
    size rounded to a multiple of 32."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise FinetuneInputError(f"image_size must be a positive integer (pixels), got {image_size!r}")
    if (
        isinstance(backbone_lr_scale, bool)
        or not isinstance(backbone_lr_scale, (int, float))
        or not math.isfinite(backbone_lr_scale)
        or backbone_lr_scale <= 0
    ):
        raise FinetuneInputError(
            f"backbone_lr_scale must be a positive number (the backbone's learning rate / learning_rate), "
            f"got {backbone_lr_scale!r}; freeze the backbone with frozen_stages instead of a zero scale"
        )
    if isinstance(frozen_stages, bool) or frozen_stages not in FROZEN_STAGES:
        raise FinetuneInputError(
            f"frozen_stages must be one of {', '.join(map(str, FROZEN_STAGES))} (-1: nothing frozen), "
            f"got {frozen_stages!r}"
        )
    return round_image_size(image_size)
