"""Dataset images of any PIL mode, array or tensor layout as the model's RGB or gray input; unreadable files found
before training."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import FinetuneInputError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImageType

__all__ = ["to_model_image", "unreadable_images", "without_unreadable_images"]

_logger = logging.getLogger(__name__)
_SHOWN = 3  # unreadable files named in a message


def to_model_image(image: Any, channels: int) -> PILImageType:
    """``image`` as a PIL image with the model's channels (``channels`` 3: RGB, 1: L).

    PIL images of any mode (L, LA, P, RGBA, CMYK, ...) are converted with PIL, as timm's and transformers'
    pipelines do (the alpha channel is dropped, grayscale is repeated). Arrays and tensors (H, W), (H, W, C)
    or (C, H, W) with C in 1, 3, 4 are read the same way (4: RGBA); any other shape, and values outside
    0-255 (integers) or 0-1 (floats), are refused with the fix, because there is no safe conversion.
    """
    from PIL import Image as PILImage

    if channels not in (1, 3):
        raise FinetuneInputError(
            f"the model takes {channels}-channel images; fine-tuning prepares 1-channel (L) or 3-channel (RGB) images only"
        )
    if not isinstance(image, PILImage.Image):
        array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
        if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # channels first (torch layout)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise FinetuneInputError(
                f"an image array of shape {array.shape} has no image layout with 1 (gray), 3 (RGB) or 4 (RGBA) channels, "
                f"and the model takes {channels}-channel images: convert the dataset's images to RGB (e.g. "
                "dataset.cast_column('image', datasets.Image()) with PIL images) or select 3 channels"
            )
        array = _as_uint8(array)
        image = PILImage.fromarray(array)  # (H, W): L, (H, W, 3): RGB, (H, W, 4): RGBA
    return image.convert("RGB" if channels == 3 else "L")


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer) and array.size and 0 <= array.min() and array.max() <= 255:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and array.size and 0.0 <= array.min() and array.max() <= 1.0:
        return np.round(array * 255).astype(np.uint8)
    raise FinetuneInputError(
        f"image array of dtype {array.dtype} with values {array.min()}..{array.max()}: expected 8-bit values (0-255) "
        "or floats in 0-1; rescale the images to 8 bits first"
    )


def unreadable_images(split: Any, column: str) -> dict[int, str]:
    """``{row: "file (reason)"}`` for the images of ``column`` that PIL cannot decode; none for array columns.

    Every image is decoded once (``Image(decode=False)`` gives the stored bytes or file path), so a corrupt or
    truncated file is found here and not in the middle of training.
    """
    from datasets import Image
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    if not isinstance(split.features[column], Image):
        return {}
    raw = split.select_columns([column]).cast_column(column, Image(decode=False))
    bad, row = {}, 0
    for batch in raw.iter(batch_size=256):
        for entry in batch[column]:
            where = (entry or {}).get("path") or f"row {row}"
            try:
                if entry is None or (entry["bytes"] is None and entry["path"] is None):
                    raise ValueError("no image")
                with PILImage.open(entry["path"] if entry["bytes"] is None else io.BytesIO(entry["bytes"])) as image:
                    image.load()
            except UnidentifiedImageError:
                bad[row] = f"{where} (not an image file PIL can read)"
            except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as error:
                bad[row] = f"{where} ({error})"
            row += 1
    return bad


def without_unreadable_images(data: Any, columns: Sequence[str], dataset: str, *, skip: bool) -> Any:
    """``data`` (a ``DatasetDict``) once every image of ``columns`` is known to decode.

    An unreadable image is refused, naming its file, unless ``skip``: then the examples holding one are dropped
    and logged with a count.
    """
    for split_name, split in list(data.items()):
        bad: dict[int, str] = {}
        for column in columns:
            bad = {**unreadable_images(split, column), **bad}
        if not bad:
            continue
        shown = "; ".join(list(bad.values())[:_SHOWN]) + ("; ..." if len(bad) > _SHOWN else "")
        where = f"{len(bad)} of {len(split)} examples of the {split_name!r} split of {dataset!r}"
        if not skip:
            raise FinetuneInputError(
                f"{where} have an image that cannot be read: {shown}; repair or delete those files, "
                "or pass --skip-bad-images (skip_bad_images=True) to train without them"
            )
        if len(bad) == len(split):
            raise FinetuneInputError(f"no image of the {split_name!r} split of {dataset!r} can be read: {shown}")
        _logger.warning("skipped %s: their image cannot be read (%s)", where, shown)
        data[split_name] = split.select([i for i in range(len(split)) if i not in bad])
    return data
