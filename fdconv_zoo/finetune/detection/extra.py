"""The ``detection`` extra's check, shared by object detection and instance segmentation: both refuse before any
work when its packages are missing, naming the install command."""

from __future__ import annotations

from importlib.util import find_spec

from ...errors import MissingExtraError

__all__ = ["require_detection_extra"]

_PACKAGES = ("scipy", "albumentations", "torchmetrics", "faster_coco_eval")


def require_detection_extra(task: str = "object detection") -> None:
    """Refuse, before anything runs, when the ``detection`` extra (which ``task`` needs) is not installed."""
    missing = [m for m in _PACKAGES if find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"{task} needs {', '.join(missing)}: pip install 'fdconv-zoo[detection]' "
            "(scipy, albumentations, torchmetrics, faster-coco-eval)"
        )
