"""The backbone options of the COCO-scored fine-tunes (detection, instance segmentation): the ``frozen_stages`` the
command line offers, and the check by which the Python API refuses, before any work, what the command line's
argument types refuse."""

from __future__ import annotations

from .errors import FinetuneInputError, check_positive

__all__ = ["FROZEN_STAGES", "check_backbone_options"]

FROZEN_STAGES = (-1, 0, 1, 2, 3, 4)  # mmdet's frozen_stages: -1 freezes nothing, 0 the stem, n the stem and n stages


def check_backbone_options(image_size: int, backbone_lr_scale: float, frozen_stages: int) -> None:
    """Refuse a non-positive image size or learning-rate scale and an unknown ``frozen_stages``."""
    check_positive("image_size", image_size, integer=True, meaning="pixels")
    check_positive(
        "backbone_lr_scale",
        backbone_lr_scale,
        meaning="the backbone's learning rate / learning_rate",
        fix="freeze the backbone with frozen_stages instead of a zero scale",
    )
    if isinstance(frozen_stages, bool) or frozen_stages not in FROZEN_STAGES:
        raise FinetuneInputError(
            f"frozen_stages must be one of {', '.join(map(str, FROZEN_STAGES))} (-1: nothing frozen), "
            f"got {frozen_stages!r}"
        )
