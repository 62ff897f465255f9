"""Image-classification datasets for fine-tuning: built-in digits, saved or class-folder datasets, Hub names."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import is_saved_dataset, load_hub_dataset, with_train_split
from .errors import FinetuneInputError
from .images import without_unreadable_images

__all__ = ["load_image_classification_dataset"]

_logger = logging.getLogger(__name__)


def load_image_classification_dataset(
    name_or_path: str, *, test_size: float = 0.2, seed: int = 0, skip_bad_images: bool = False
) -> Any:
    """A ``DatasetDict`` with ``train`` and ``test`` splits of ``image``/``label`` examples.

    ``name_or_path``: ``digits`` (built in, offline), a folder written by ``save_to_disk``, a local folder
    with one sub-folder per class (``imagefolder``), or a dataset name on the Hub. The evaluation split is
    ``test``, else ``validation`` (an all-unlabelled split, labels -1, is skipped), else a stratified
    ``test_size`` share of ``train``. Labels outside the classes, fewer than 2 classes and images that cannot
    be read are refused here, before any training (``skip_bad_images``: unreadable images are dropped instead).
    """
    from datasets import ClassLabel, DatasetDict, load_from_disk

    if name_or_path == "digits":
        data = DatasetDict(train=_digits())
    elif is_saved_dataset(Path(name_or_path)):
        data = load_from_disk(name_or_path)
    elif Path(name_or_path).is_dir():
        data = _load_image_folder(Path(name_or_path))
    else:
        data = load_hub_dataset(
            name_or_path, "'digits', a folder written by dataset.save_to_disk, a folder with one sub-folder per class"
        )
    data = with_train_split(data, name_or_path)
    columns = set(data["train"].column_names)
    if not {"image", "label"} <= columns:
        raise FinetuneInputError(
            f"dataset {name_or_path!r} needs 'image' and 'label' columns, found {sorted(columns)}; "
            "rename them with dataset.rename_column(old, new)"
        )
    if not isinstance(data["train"].features["label"], ClassLabel):
        raise FinetuneInputError(
            f"the 'label' column of {name_or_path!r} must be a ClassLabel; convert it with dataset.class_encode_column('label')"
        )
    names = data["train"].features["label"].names
    if len(names) < 2:
        raise FinetuneInputError(
            f"dataset {name_or_path!r} has {len(names)} class ({', '.join(names) or 'none'}); a classifier needs at "
            "least 2: give the 'label' ClassLabel every class name"
        )
    _check_class_labels(data["train"], "train", names, name_or_path)
    for split in ("test", "validation"):
        if split not in data:
            continue
        if (np.asarray(data[split]["label"]) == -1).all():  # Hub test splits are often unlabelled
            _logger.info(
                "the %r split of %s is unlabelled (all labels -1): not used for evaluation", split, name_or_path
            )
            continue
        _check_class_labels(data[split], split, names, name_or_path)
        return _readable(DatasetDict(train=data["train"], test=data[split]), name_or_path, skip_bad_images)
    split = data["train"].train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")
    return _readable(split, name_or_path, skip_bad_images)


def _readable(data: Any, name_or_path: str, skip_bad_images: bool) -> Any:
    """Every image decoded once before training (the built-in digits are known to be good)."""
    if name_or_path == "digits":
        return data
    return without_unreadable_images(data, ["image"], name_or_path, skip=skip_bad_images)


def _load_image_folder(folder: Path) -> Any:
    """``imagefolder``'s dataset of ``folder``, refused with the layout it needs when it has no images or classes."""
    from datasets import load_dataset

    layout = f"one sub-folder per class, at least 2 (e.g. {folder / 'cat' / '1.jpg'}, {folder / 'dog' / '1.jpg'})"
    try:
        data = load_dataset("imagefolder", data_dir=str(folder))
    except FileNotFoundError:  # datasets' EmptyDatasetError: no image files at all
        raise FinetuneInputError(f"folder {folder} holds no image files; put the images into {layout}") from None
    if "label" not in data["train"].column_names:  # imagefolder names classes only for 2+ sub-folders
        sub_folders = sorted(d.name for d in folder.iterdir() if d.is_dir())
        raise FinetuneInputError(
            f"image folder {folder} gives no classes (sub-folders: {', '.join(sub_folders) or 'none'}); "
            f"a classifier needs {layout}"
        )
    return data


def _digits() -> Any:
    """scikit-learn's 1,797 8x8 handwritten digits (shipped inside the package: works offline)."""
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [PILImage.fromarray((img * 16).clip(0, 255).astype(np.uint8), mode="L") for img in digits.images]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    return Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)


def _check_class_labels(split: Any, split_name: str, names: Sequence[str], dataset: str) -> None:
    """Refuse labels outside ``0..len(names)-1`` before training (``ClassLabel`` lets -1, "no label", through)."""
    labels = np.asarray(split["label"])
    bad = (labels < 0) | (labels >= len(names))
    if bad.any():
        values = np.unique(labels[bad])
        raise FinetuneInputError(
            f"the {split_name!r} split of {dataset!r} has {int(bad.sum())} of {len(labels)} labels outside 0..{len(names) - 1} "
            f"(its {len(names)} classes): {values[:10].tolist()}; -1 marks unlabelled examples: drop them with "
            "dataset.filter(lambda e: 0 <= e['label'] < num_classes), or give the 'label' ClassLabel every class name"
        )
