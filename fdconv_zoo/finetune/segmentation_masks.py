"""Segmentation masks for fine-tuning: reading them as class-id maps, and the label checks before training.

Mask value 255 is ignored by the loss and the metrics. Every mask is read once before training, so a value
outside the classes is refused with its pixel and mask counts and the fix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import FinetuneInputError
from .segmentation_data import parse_id2label

__all__ = ["IGNORE_INDEX", "mask_array", "mask_label_counts", "resolve_classes"]

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255  # unlabelled pixels: no loss, not counted by the metrics (SegformerImageProcessor's convention)


def mask_array(mask: Any) -> np.ndarray:
    """A mask as a 2-D integer array of class ids (palette 'P' and 'L' images give their pixel values).

    RGB masks whose three channels are equal (gray masks saved as RGB) are read as one channel; colour-coded
    masks are refused: their colours must first be mapped to class ids.
    """
    array = np.array(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)  # a writable copy
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim == 3 and array.shape[-1] in (3, 4) and (array[..., :3] == array[..., :1]).all():
        array = array[..., 0]
    if array.ndim != 2:
        raise FinetuneInputError(
            f"a mask of shape {array.shape}: masks must be single-channel (H, W) maps of class ids; colour-coded "
            "(RGB) masks need their colours mapped to class ids first"
        )
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.array_equal(array, np.round(array)):
            return array.astype(np.int64)
        raise FinetuneInputError(
            f"a mask of dtype {array.dtype} holds non-integer values: masks are maps of integer class ids"
        )
    return array


def _reduced(values: np.ndarray) -> np.ndarray:
    """SegformerImageProcessor's ``reduce_labels``: 0 (background) -> 255, every other id -> id - 1, 255 stays."""
    return np.where((values == 0) | (values == IGNORE_INDEX), IGNORE_INDEX, values - 1)


def mask_label_counts(
    masks: Any, *, reduce_labels: bool = False, description: str = "masks"
) -> dict[int, tuple[int, int, int]]:
    """``{label: (pixels, masks, first example)}`` over a sequence of masks, after ``reduce_labels``.

    Every mask is read once (with a progress bar), so label problems surface before any training.
    """
    pixels: dict[int, int] = {}
    images: dict[int, int] = {}
    first: dict[int, int] = {}
    for index, mask in enumerate(tqdm(masks, desc=f"checking {description}", unit="mask", leave=False)):
        array = mask_array(mask)
        if array.dtype == np.uint8:
            counts = np.bincount(array.ravel(), minlength=256)
            values = np.flatnonzero(counts)
            counts = counts[values]
        else:
            values, counts = np.unique(array, return_counts=True)
        if reduce_labels:
            values = _reduced(values)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            pixels[value] = pixels.get(value, 0) + count
            images[value] = images.get(value, 0) + 1
            first.setdefault(value, index)
    return {v: (pixels[v], images[v], first[v]) for v in sorted(pixels)}


def _check_labels(
    counts: Mapping[str, Mapping[int, tuple[int, int, int]]], num_labels: int, dataset: str, reduce_labels: bool
) -> None:
    """Refuse mask values outside ``0..num_labels-1`` (other than 255) before training, naming the fix."""
    bad = {
        split: {v: c for v, c in split_counts.items() if (v < 0 or v >= num_labels) and v != IGNORE_INDEX}
        for split, split_counts in counts.items()
    }
    bad = {split: values for split, values in bad.items() if values}
    if not bad:
        return
    described = "; ".join(
        f"{split}: "
        + ", ".join(
            f"{v} ({p:,} pixels in {m} masks, first in example {i})" for v, (p, m, i) in list(values.items())[:8]
        )
        for split, values in bad.items()
    )
    largest = max(v for values in bad.values() for v in values)
    hints = []
    if not reduce_labels and largest == num_labels and any(0 in c for c in counts.values()):
        hints.append(
            f"if 0 marks unlabelled pixels and the classes are 1..{num_labels}, pass --reduce-labels (reduce_labels=True)"
        )
    hints.append(f"pass --num-labels {largest + 1} (or an --id2label naming every class)")
    hints.append(f"or set those pixels to {IGNORE_INDEX} (ignored) in the masks")
    raise FinetuneInputError(
        f"masks of {dataset!r} hold values outside the {num_labels} classes 0..{num_labels - 1} and {IGNORE_INDEX} (ignored)"
        f"{' after reduce_labels' if reduce_labels else ''}: {described}. Fix: {'; '.join(hints)}"
    )


def resolve_classes(
    data: Any,
    dataset: str,
    dataset_names: dict[int, str] | None,
    *,
    id2label: Mapping[int, str] | None,
    num_labels: int | None,
    reduce_labels: bool,
) -> dict[int, str]:
    """The classes: ``id2label``, else ``num_labels`` (named by their ids), else ``dataset_names``, else the
    largest mask value + 1; every mask of every split is read first and checked against them."""
    if id2label is not None:
        id2label = parse_id2label(json.dumps({str(k): v for k, v in id2label.items()}), "id2label")
        if num_labels is not None and num_labels != len(id2label):
            raise FinetuneInputError(
                f"--num-labels {num_labels} disagrees with the {len(id2label)} classes of --id2label: give one of them"
            )
    counts = {
        split: mask_label_counts(data[split]["annotation"], reduce_labels=reduce_labels, description=f"{split} masks")
        for split in data
    }
    if id2label is None and num_labels is not None:
        id2label = {i: str(i) for i in range(num_labels)}
    if id2label is None:
        id2label = dataset_names
    if id2label is None:
        seen = [v for c in counts.values() for v in c if 0 <= v != IGNORE_INDEX]
        if not seen:
            raise FinetuneInputError(
                f"every mask pixel of {dataset!r} is {IGNORE_INDEX} (ignored){' after reduce_labels' if reduce_labels else ''}: nothing to learn"
            )
        id2label = {i: str(i) for i in range(max(seen) + 1)}
        _logger.info(
            "%d classes: the largest mask value + 1 (name them with --id2label or --num-labels)", len(id2label)
        )
    _check_labels(counts, len(id2label), dataset, reduce_labels)
    return id2label
