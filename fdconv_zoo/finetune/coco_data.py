"""COCO-style object annotations from the layouts users have, checked and cleaned once, for any instance task.

Two sources become the same :class:`CocoSplits`: a folder with ``train/`` and ``val/`` (or ``valid/``,
``validation/``) sub-folders, each holding its images and one COCO json (``_annotations.coco.json``, the
layout labelling tools export, or ``annotations.json``; ``file_name`` is relative to the json's folder);
or a ``datasets`` dataset (a ``save_to_disk`` folder or a Hub name) in the cppe-5 layout: ``image`` and
``objects`` with ``bbox`` (COCO x, y, width, height) and ``category``.

Category ids become contiguous labels ``0..n-1`` (names kept); images without objects are kept; crowd and
degenerate boxes are dropped and counted; boxes are clipped to their image. Each object keeps its
``segmentation`` (polygons or RLE, as given), so instance segmentation can reuse this layer; with
``masks=True`` every segmentation is checked and turned into a compressed RLE of its image's size up front
(faster-coco-eval's mask utilities, the pycocotools API), and crowd regions are kept, flagged, for the
evaluation to ignore as COCO does. Images stay on disk (or in the dataset) until :meth:`CocoImage.open`
reads them.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .data import is_saved_dataset, load_hub_dataset, with_train_split
from .errors import FinetuneInputError

__all__ = ["COCO_JSON_NAMES", "CocoImage", "CocoObject", "CocoSplits", "load_coco_dataset", "segmentation_rle"]

_logger = logging.getLogger(__name__)

COCO_JSON_NAMES = ("_annotations.coco.json", "annotations.json")
_EVAL_FOLDERS = ("val", "valid", "validation")
_EVAL_SPLITS = ("validation", "valid", "val", "test")


@dataclass(frozen=True)
class CocoObject:
    """One object: ``bbox`` (x, y, width, height in pixels, inside the image), its contiguous ``label``."""

    bbox: tuple[float, float, float, float]
    label: int
    segmentation: Any = None  # COCO polygons (list of lists) or RLE (dict); compressed RLE with masks=True
    iscrowd: bool = False  # only kept (flagged) with masks=True; otherwise crowd regions are dropped


@dataclass(frozen=True)
class CocoImage:
    """An image (read on demand) with its objects; ``width``/``height`` are the image file's own."""

    image_id: int
    source: Any  # a Path, or (dataset, row) of a ``datasets`` dataset whose image column is not decoded
    width: int
    height: int
    objects: tuple[CocoObject, ...]

    def open(self) -> Any:
        """The image as PIL reads it (any mode; callers convert)."""
        from PIL import Image

        if isinstance(self.source, Path):
            return Image.open(self.source)
        dataset, row = self.source
        return _decode(dataset[row]["image"])


@dataclass
class CocoSplits:
    """The train and evaluation images, the class names, and what cleaning removed."""

    train: list[CocoImage]
    test: list[CocoImage]
    id2label: dict[int, str]
    category_ids: dict[int, Any]  # label -> the source's category id (COCO ids are 1-90 with gaps)
    dropped: Counter = field(default_factory=Counter)
    skipped_images: list[str] = field(default_factory=list)  # images left out with skip_bad_images, and why


def load_coco_dataset(
    name_or_path: str | Path,
    *,
    id2label: Mapping[int, str] | None = None,
    masks: bool = False,
    skip_bad_images: bool = False,
) -> CocoSplits:
    """Read and check a COCO folder or a ``datasets`` dataset (see the module docstring); errors name the fix.

    ``id2label`` names a ``datasets`` dataset's categories when its ``category`` feature has no names
    (its keys are the category values, any integers). ``masks=True`` requires a valid ``segmentation`` on
    every object and stores it as a compressed RLE (see :func:`segmentation_rle`). A missing or unreadable image
    (its header is read here, its pixels when training reads it) is refused, naming its file, unless
    ``skip_bad_images``: then it is left out with its objects, and logged with a count.
    """
    path = Path(name_or_path)
    bad = _BadImages(skip_bad_images)
    if path.is_dir() and not is_saved_dataset(path):
        splits = _load_coco_folder(path, masks, bad)
    else:
        splits = _load_datasets_layout(str(name_or_path), path, id2label, masks, bad)
    splits.skipped_images = bad.skipped
    if bad.skipped:
        shown = "; ".join(bad.skipped[:3]) + ("; ..." if len(bad.skipped) > 3 else "")
        _logger.warning("skipped %d images that cannot be read, with their objects: %s", len(bad.skipped), shown)
    for name, images in (("train", splits.train), ("evaluation", splits.test)):
        if not images:
            raise FinetuneInputError(f"the {name} split of {name_or_path} holds no images: add images to it")
    if splits.dropped:
        _logger.info(
            "dropped %s", ", ".join(f"{count} {reason} boxes" for reason, count in sorted(splits.dropped.items()))
        )
    empty = sum(not image.objects for image in splits.train)
    _logger.info(
        "%s: %d train and %d evaluation images (%d train images without objects, kept), %d classes",
        name_or_path,
        len(splits.train),
        len(splits.test),
        empty,
        len(splits.id2label),
    )
    return splits


# --- a folder of COCO json files ------------------------------------------------------------------------


class _BadImages:
    """What to do with an image that cannot be read: refuse it (naming the fix), or with ``skip`` note it."""

    def __init__(self, skip: bool) -> None:
        self.skip, self.skipped = skip, []

    def refuse_or_skip(self, problem: str, fix: str) -> None:
        """Raise naming ``problem`` and ``fix`` (and the option), or with ``skip`` note the image as left out."""
        if not self.skip:
            raise FinetuneInputError(
                f"{problem}: {fix}, or pass --skip-bad-images (skip_bad_images=True) to train without it"
            )
        self.skipped.append(problem)

    def size(self, open_image: Callable[[], Any], where: str, fix: str) -> tuple[int, int] | None:
        """The image's (width, height) from its header; ``None`` when it is skipped."""
        from PIL import Image, UnidentifiedImageError

        try:
            with open_image() as image:
                return image.size
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            self.refuse_or_skip(f"{where} ({error}) is not a readable image", fix)
        return None


def _load_coco_folder(root: Path, masks: bool, bad: _BadImages) -> CocoSplits:
    train_dir = root / "train"
    eval_dir = next((root / name for name in _EVAL_FOLDERS if (root / name).is_dir()), None)
    if not train_dir.is_dir() or eval_dir is None:
        raise FinetuneInputError(
            f"folder {root} needs train/ and val/ (or valid/) sub-folders, each with its images and a COCO json "
            f"({' or '.join(COCO_JSON_NAMES)}); or pass a dataset written by dataset.save_to_disk"
        )
    train_json = _coco_json(train_dir)
    categories = _read_json(train_json).get("categories") or []
    category_ids = _category_ids(categories, train_json)
    id2label = {label: str(c.get("name", c["id"])) for c, label in zip(categories, category_ids.values(), strict=True)}
    label_of = {source: label for label, source in enumerate(category_ids)}
    dropped: Counter = Counter()
    train = _read_coco_split(train_json, label_of, dropped, masks, bad)
    test = _read_coco_split(_coco_json(eval_dir), label_of, dropped, masks, bad)
    return CocoSplits(train, test, id2label, {label: source for source, label in label_of.items()}, dropped)


def _coco_json(folder: Path) -> Path:
    found = next((folder / name for name in COCO_JSON_NAMES if (folder / name).is_file()), None)
    if found is None:
        raise FinetuneInputError(
            f"{folder} has no COCO annotation file: put its annotations in {folder / COCO_JSON_NAMES[0]} "
            f"(or {COCO_JSON_NAMES[1]})"
        )
    return found


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise FinetuneInputError(f"{file} is not readable JSON ({error}): export the COCO file again") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise FinetuneInputError(f"{file} is not a COCO file (no 'images' list): export it in COCO format")
    return data


def _category_ids(categories: Sequence[Mapping[str, Any]], file: Path) -> dict[Any, int]:
    """Source category id -> contiguous label, in id order."""
    if not categories:
        raise FinetuneInputError(f"{file} has no 'categories': list the classes as [{{'id': 1, 'name': 'cat'}}, ...]")
    ids = [c.get("id") for c in categories]
    if len(set(ids)) != len(ids) or None in ids:
        raise FinetuneInputError(f"{file}: category ids must be present and unique, got {ids}")
    return {source: label for label, source in enumerate(sorted(ids))}


def _read_coco_split(
    file: Path, label_of: Mapping[Any, int], dropped: Counter, masks: bool, bad: _BadImages
) -> list[CocoImage]:
    from PIL import Image

    data = _read_json(file)
    known = {c.get("id") for c in data.get("categories") or []} | set(label_of)
    objects: dict[Any, list[CocoObject]] = {entry.get("id"): [] for entry in data["images"]}
    sizes = {}
    for entry in data["images"]:
        image_path = file.parent / str(entry.get("file_name", ""))
        if not image_path.is_file():
            where = f"{file}: image {entry.get('file_name')!r} (id {entry.get('id')})"
            bad.refuse_or_skip(
                f"{where} is missing at {image_path}", "put the image there or remove its entry from the json"
            )
            continue
        size = bad.size(partial(Image.open, image_path), str(image_path), "replace or remove it")
        if size is not None:
            sizes[entry.get("id")] = size
    for annotation in data.get("annotations") or []:
        image_id = annotation.get("image_id")
        where = f"{file}: annotation {annotation.get('id')}"
        if image_id not in objects:
            raise FinetuneInputError(
                f"{where} points to image id {image_id!r}, which is not in 'images': add the image or remove the annotation"
            )
        category = annotation.get("category_id")
        if category not in label_of:
            listed = "listed in this file but not in train's categories" if category in known else "not in 'categories'"
            raise FinetuneInputError(
                f"{where} has category_id {category!r}, {listed}: add it to the train json's categories or fix the id"
            )
        if image_id not in sizes:  # a skipped image's object
            continue
        if annotation.get("iscrowd") and not masks:
            dropped["crowd"] += 1
            continue
        obj = _clean_object(annotation, label_of[category], sizes[image_id], where, dropped, masks)
        if obj is not None:
            objects[image_id].append(obj)
    return [
        CocoImage(
            int(i) if isinstance(i, int) else n, file.parent / str(e.get("file_name")), *sizes[i], tuple(objects[i])
        )
        for n, (i, e) in enumerate((e.get("id"), e) for e in data["images"])
        if i in sizes
    ]


def _clean_object(
    annotation: Mapping[str, Any], label: int, size: tuple[int, int], where: str, dropped: Counter, masks: bool
) -> CocoObject | None:
    """The object with its box clipped to the image (and its mask as RLE with ``masks``); ``None`` (counted)
    when nothing of it is left."""
    bbox, segmentation = annotation.get("bbox"), annotation.get("segmentation")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise FinetuneInputError(f"{where} has bbox {bbox!r}: a COCO bbox is [x, y, width, height] in pixels")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        raise FinetuneInputError(
            f"{where} has a non-numeric bbox {bbox!r}: write it as four numbers [x, y, width, height]"
        )
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise FinetuneInputError(
            f"{where} has a negative box size {bbox!r}: COCO boxes are [x, y, width, height], not [x1, y1, x2, y2]"
        )
    width, height = size
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 - x0 < 1 or y1 - y0 < 1:  # under a pixel wide or high, inside the image
        dropped["degenerate"] += 1
        return None
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        dropped["clipped (kept)"] += 1
    crowd = bool(annotation.get("iscrowd"))
    if masks:
        segmentation = segmentation_rle(segmentation, size, where)
    return CocoObject((x0, y0, x1 - x0, y1 - y0), label, segmentation, crowd)


def segmentation_rle(segmentation: Any, size: tuple[int, int], where: str) -> dict[str, Any]:
    """A COCO ``segmentation`` (polygons, or RLE with ``counts`` a list or a string) as one compressed RLE of
    the image's ``size`` (width, height); polygons reaching outside the image are clipped to it."""
    from faster_coco_eval.core import mask as mask_utils

    width, height = size
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        raise FinetuneInputError(
            f"{where} has no 'segmentation': instance segmentation needs each object's mask, as polygons "
            "[[x1, y1, x2, y2, ...]] or RLE {'size': [h, w], 'counts': ...}; add it or remove the annotation"
        )
    if isinstance(segmentation, Mapping):
        rle_size = segmentation.get("size")
        if not isinstance(rle_size, (list, tuple)) or list(rle_size) != [height, width]:
            raise FinetuneInputError(
                f"{where} has a mask of size {rle_size} (height, width), its image is [{height}, {width}]: "
                "export the mask at the image's own size (or fix the image's entry)"
            )
        rle = dict(segmentation)
        try:
            if isinstance(rle.get("counts"), list):
                rle = mask_utils.frPyObjects(rle, height, width)
            elif isinstance(rle.get("counts"), str):
                rle["counts"] = rle["counts"].encode()
            mask_utils.decode(rle)  # checks that the counts cover the image exactly
        except (ValueError, TypeError, KeyError, RuntimeError) as error:
            raise FinetuneInputError(f"{where} has a broken RLE mask ({error}): export the mask again") from None
        return rle
    polygons = segmentation if isinstance(segmentation, list) else None
    if polygons is None or not all(
        isinstance(p, list)
        and len(p) >= 6
        and len(p) % 2 == 0
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
        for p in polygons
    ):
        raise FinetuneInputError(
            f"{where} has a broken polygon segmentation: write it as [[x1, y1, x2, y2, x3, y3, ...]], each "
            "polygon at least three points (an even count of numbers), or as RLE"
        )
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


# --- a datasets dataset in the cppe-5 layout ------------------------------------------------------------


def _load_datasets_layout(
    name: str, path: Path, id2label: Mapping[int, str] | None, masks: bool, bad: _BadImages
) -> CocoSplits:
    from datasets import Image

    if is_saved_dataset(path):
        from datasets import load_from_disk

        data = load_from_disk(str(path))
    else:
        data = load_hub_dataset(name, "a folder with train/ and val/ COCO sub-folders, a dataset.save_to_disk folder")
    data = with_train_split(data, name)
    columns = data["train"].column_names
    if "image" not in columns or "objects" not in columns:
        raise FinetuneInputError(
            f"dataset {name!r} has columns {columns}: object detection needs 'image' and 'objects' (with 'bbox' in "
            "COCO x, y, width, height and 'category'), the cppe-5 layout; rename yours with dataset.rename_column"
        )
    eval_split = next((s for s in _EVAL_SPLITS if s in data), None)
    if eval_split is None:
        raise FinetuneInputError(
            f"dataset {name!r} has no evaluation split (splits: {list(data)}): add a 'validation' or 'test' split, "
            "e.g. data['train'].train_test_split(test_size=0.2)"
        )
    names = _category_names(data["train"].features["objects"], id2label, name)
    label_of = {source: label for label, source in enumerate(sorted(names))}
    dropped: Counter = Counter()
    splits = []
    for split in ("train", eval_split):
        table = data[split].cast_column("image", Image(decode=False))
        splits.append(_read_rows(table, label_of, dropped, f"dataset {name!r}, split {split!r}", masks, bad))
    id2label_out = {label: str(names[source]) for source, label in label_of.items()}
    return CocoSplits(splits[0], splits[1], id2label_out, {v: k for k, v in label_of.items()}, dropped)


def _category_names(feature: Any, id2label: Mapping[int, str] | None, name: str) -> dict[int, str]:
    from datasets import ClassLabel

    category = feature["category"] if isinstance(feature, Mapping) else getattr(feature, "feature", {}).get("category")
    while hasattr(category, "feature"):  # List / Sequence of ClassLabel
        category = category.feature
    if id2label is not None:
        return {int(k): str(v) for k, v in id2label.items()}
    if isinstance(category, ClassLabel):
        return dict(enumerate(category.names))
    raise FinetuneInputError(
        f"dataset {name!r} has no class names (its 'category' is not a ClassLabel): pass --id2label "
        '\'{"0": "coverall", "1": "face_shield"}\' (id2label=)'
    )


def _read_rows(
    table: Any, label_of: Mapping[int, int], dropped: Counter, where: str, masks: bool, bad: _BadImages
) -> list[CocoImage]:
    images = []
    for row_index, row in enumerate(table):
        size = bad.size(partial(_decode, row["image"]), f"{where}, row {row_index}", "repair or drop that row")
        if size is None:
            continue
        objects = row["objects"]
        if isinstance(objects, Mapping):  # a struct of lists
            objects = [dict(zip(objects, values, strict=True)) for values in zip(*objects.values(), strict=True)]
        kept = []
        for n, obj in enumerate(objects):
            spot = f"{where}, row {row_index}, object {n}"
            category = obj.get("category")
            if category not in label_of:
                raise FinetuneInputError(
                    f"{spot} has category {category!r}, which has no class name: add it to --id2label (known: "
                    f"{sorted(label_of)[:20]})"
                )
            if obj.get("iscrowd") and not masks:
                dropped["crowd"] += 1
                continue
            cleaned = _clean_object(obj, label_of[category], size, spot, dropped, masks)
            if cleaned is not None:
                kept.append(cleaned)
        image_id = row.get("image_id", row_index)
        images.append(CocoImage(int(image_id), (table, row_index), *size, tuple(kept)))
    return images


def _decode(value: Any) -> Any:
    """A PIL image from a ``datasets`` image value (decoded, or ``{'bytes', 'path'}``)."""
    import io

    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if value.get("bytes") is not None:
        return Image.open(io.BytesIO(value["bytes"]))
    return Image.open(value["path"])
