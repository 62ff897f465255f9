"""Dataset images of any PIL mode, array or tensor layout as the model's RGB or gray input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import FinetuneInputError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImageType

__all__ = ["to_model_image"]


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
