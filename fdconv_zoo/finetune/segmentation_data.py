"""Semantic-segmentation datasets for fine-tuning: saved, folder-layout or Hub datasets, and their class names.

Every dataset becomes ``image`` + ``annotation`` columns, whatever its own column names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .data import is_saved_dataset, load_hub_dataset, with_train_split
from .errors import FinetuneInputError
from .images import without_unreadable_images

__all__ = ["IMAGE_COLUMNS", "MASK_COLUMNS", "load_semantic_segmentation_dataset", "parse_id2label"]

IMAGE_COLUMNS = ("image", "pixel_values", "img")
MASK_COLUMNS = ("annotation", "label", "mask", "segmentation_mask", "semantic_map")
_LAYOUT_MASK_FOLDERS = ("annotations", "masks", "labels")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def load_semantic_segmentation_dataset(
    name_or_path: str,
    *,
    image_column: str | None = None,
    mask_column: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    skip_bad_images: bool = False,
) -> tuple[Any, dict[int, str] | None]:
    """``(DatasetDict(train, test), id2label or None)``; both splits have exactly ``image`` and ``annotation``.

    ``name_or_path``: a folder written by ``save_to_disk``, a folder of ``images/`` + ``annotations/`` (or
    ``masks/``, ``labels/``) files paired by name, optionally inside ``train/``, ``validation/``, ``test/``,
    or a dataset name on the Hub. The evaluation split is ``validation``, else ``test``, else a ``test_size``
    share of ``train``. Class names come from a mask column of ``ClassLabel`` values or an ``id2label.json``
    beside the data (in the folder or the Hub repo, the convention of the transformers examples). Every image
    and mask is decoded once here: one that cannot be read is refused, naming its file, or with
    ``skip_bad_images`` its example is dropped.
    """
    from datasets import DatasetDict

    path = Path(name_or_path)
    if is_saved_dataset(path):
        from datasets import load_from_disk

        data = load_from_disk(str(path))
    elif path.is_dir():
        data = _load_folder_layout(path)
    else:
        data = load_hub_dataset(
            name_or_path, "a folder written by dataset.save_to_disk, a folder of images/ + annotations/"
        )
    data = with_train_split(data, name_or_path)
    columns = data["train"].column_names
    image_column = _pick_column(columns, image_column, IMAGE_COLUMNS, "image", name_or_path)
    mask_column = _pick_column(columns, mask_column, MASK_COLUMNS, "mask", name_or_path)
    _check_mask_feature(data["train"].features[mask_column], mask_column, name_or_path)
    id2label = _class_names(data["train"].features[mask_column]) or _id2label_file(name_or_path, path)

    def canonical(split: Any) -> Any:
        split = split.select_columns([image_column, mask_column])
        renames = {old: new for old, new in ((image_column, "image"), (mask_column, "annotation")) if old != new}
        return split.rename_columns(renames) if renames else split

    evaluation = next((s for s in ("validation", "test") if s in data and mask_column in data[s].column_names), None)
    if evaluation is not None:
        splits = DatasetDict(train=canonical(data["train"]), test=canonical(data[evaluation]))
    else:
        split = data["train"].train_test_split(test_size=test_size, seed=seed)
        splits = DatasetDict(train=canonical(split["train"]), test=canonical(split["test"]))
    return without_unreadable_images(splits, ["image", "annotation"], name_or_path, skip=skip_bad_images), id2label


def _load_folder_layout(root: Path) -> Any:
    """``images/`` + ``annotations/`` folders (files paired by name), at the root or per split folder."""
    from datasets import Dataset, DatasetDict, Features, Image

    split_dirs = {"val": "validation", "valid": "validation"}
    roots = {
        split_dirs.get(d.name, d.name): d for d in sorted(root.iterdir()) if d.is_dir() and (d / "images").is_dir()
    }
    if (root / "images").is_dir():
        roots = {"train": root}
    if not roots:
        raise FinetuneInputError(
            f"folder {root} is not a dataset written by dataset.save_to_disk and has no images/ folder: expected "
            "images/ + annotations/ (masks paired with images by file name), optionally inside train/ and validation/"
        )
    splits = {}
    for split, folder in roots.items():
        masks_dir = next((folder / m for m in _LAYOUT_MASK_FOLDERS if (folder / m).is_dir()), None)
        if masks_dir is None:
            raise FinetuneInputError(
                f"{folder} has images/ but no mask folder: add one of {', '.join(_LAYOUT_MASK_FOLDERS)}/ with a mask per image"
            )
        images = {p.stem: p for p in sorted((folder / "images").iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES}
        masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES}
        unpaired = sorted(set(images) ^ set(masks))
        if unpaired:
            raise FinetuneInputError(
                f"{folder}: {len(unpaired)} images or masks have no partner of the same name (e.g. {unpaired[:3]})"
            )
        if not images:
            raise FinetuneInputError(f"{folder / 'images'} holds no image files")
        features = Features({"image": Image(), "annotation": Image()})
        splits[split] = Dataset.from_dict(
            {"image": [str(images[k]) for k in sorted(images)], "annotation": [str(masks[k]) for k in sorted(images)]},
            features=features,
        )
    return DatasetDict(splits)


def _pick_column(columns: list[str], chosen: str | None, candidates: tuple[str, ...], kind: str, dataset: str) -> str:
    if chosen is not None:
        if chosen not in columns:
            raise FinetuneInputError(
                f"dataset {dataset!r} has no column {chosen!r} (--{kind}-column); its columns: {columns}"
            )
        return chosen
    found = next((c for c in candidates if c in columns), None)
    if found is None:
        raise FinetuneInputError(
            f"dataset {dataset!r} needs an image column (one of {', '.join(IMAGE_COLUMNS)}) and a segmentation-mask column "
            f"(one of {', '.join(MASK_COLUMNS)}), found {columns}; name yours with --image-column/--mask-column "
            "(image_column=/mask_column=) or rename them with dataset.rename_column(old, new)"
        )
    return found


def _check_mask_feature(feature: Any, column: str, dataset: str) -> None:
    """A class per image (ClassLabel or a number) is an image-classification dataset, not masks."""
    from datasets import ClassLabel, Value

    if isinstance(feature, (ClassLabel, Value)):
        raise FinetuneInputError(
            f"column {column!r} of {dataset!r} holds one {type(feature).__name__} per image, not a segmentation mask: "
            "this is an image-classification dataset (use fdconv-zoo finetune-classification), or name the mask "
            "column with --mask-column"
        )


def _class_names(feature: Any) -> dict[int, str] | None:
    """Names of a mask column whose pixels are ``ClassLabel`` values (nested lists of a ClassLabel)."""
    from datasets import ClassLabel

    while hasattr(feature, "feature"):  # List / Sequence / LargeList
        feature = feature.feature
    return dict(enumerate(feature.names)) if isinstance(feature, ClassLabel) else None


def _id2label_file(name_or_path: str, path: Path) -> dict[int, str] | None:
    """``id2label.json`` beside a local dataset or in its Hub dataset repo, if there is one."""
    if path.is_dir():
        file = path / "id2label.json"
        return parse_id2label(file.read_text(), str(file)) if file.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        file = hf_hub_download(name_or_path, "id2label.json", repo_type="dataset")
    except Exception:  # noqa: BLE001  (no such file, or offline and not cached: names are optional)
        return None
    return parse_id2label(Path(file).read_text(), file)


def parse_id2label(text: str, source: str) -> dict[int, str]:
    """``{"0": "background", ...}`` as ``{0: "background", ...}``; ids must be 0..n-1."""
    try:
        raw = json.loads(text)
        id2label = {int(k): str(v) for k, v in raw.items()}
    except (ValueError, AttributeError, TypeError) as error:
        raise FinetuneInputError(
            f'id2label from {source} is not a JSON object of id -> name ({error}): write it as {{"0": "background", "1": "road"}}'
        ) from None
    if sorted(id2label) != list(range(len(id2label))):
        raise FinetuneInputError(
            f"id2label from {source} must number its classes 0..{len(id2label) - 1}, got ids {sorted(id2label)[:10]}"
        )
    return id2label
