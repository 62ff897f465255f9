"""Generated instance-segmentation data (COCO folders whose objects have polygon or RLE masks) and a tiny
Mask2Former configuration for the instance-segmentation tests; the images and the tiny FDConv ResNet are the
detection tests' (bright class-coloured rectangles on dark noise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from detection_testing import NAMES, SOURCE_IDS, draw
from faster_coco_eval.core import mask as mask_utils

TINY_MASK2FORMER = dict(
    hidden_dim=32,
    mask_feature_size=32,
    feature_size=32,
    encoder_layers=1,
    decoder_layers=2,
    num_attention_heads=2,
    encoder_feedforward_dim=64,
    dim_feedforward=64,
    num_queries=10,
    train_num_points=1024,
)


def rectangle_polygon(bbox: tuple[int, int, int, int]) -> list[list[float]]:
    """The COCO polygon of a box (x, y, width, height) in pixel-edge coordinates."""
    x, y, w, h = bbox
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def rectangle_rle(bbox: tuple[int, int, int, int], size: tuple[int, int], *, compressed: bool) -> dict[str, Any]:
    """The RLE of a box's pixels in an image of ``size`` (width, height): compressed (``counts`` a string) or
    uncompressed (``counts`` a list, as COCO writes crowd regions)."""
    x, y, w, h = bbox
    mask = np.zeros(size[::-1], dtype=np.uint8)
    mask[y : y + h, x : x + w] = 1
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask))
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def write_instance_split(folder: Path, n_images: int, *, seed: int, size: tuple[int, int] = (128, 128)) -> dict:
    """A split folder: images plus a COCO json with ids 3/7/11, one image without objects, every other object's
    mask as compressed RLE (the others as polygons); returns the json."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n_images):
        image, objects = draw(rng, size, 0 if i == 0 else int(rng.integers(1, 3)))
        image.save(folder / f"img{i}.png")
        images.append({"id": i + 1, "file_name": f"img{i}.png", "width": size[0], "height": size[1]})
        for bbox, cls in objects:
            n = len(annotations)
            segmentation = rectangle_rle(bbox, size, compressed=True) if n % 2 else rectangle_polygon(bbox)
            annotations.append(
                {
                    "id": n + 1,
                    "image_id": i + 1,
                    "category_id": SOURCE_IDS[cls],
                    "bbox": list(bbox),
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                    "segmentation": segmentation,
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for i, n in zip(SOURCE_IDS, NAMES, strict=True)],
    }
    (folder / "_annotations.coco.json").write_text(json.dumps(coco))
    return coco


def write_instance_folder(root: Path, n_train: int = 6, n_val: int = 3, **kwargs: Any) -> Path:
    write_instance_split(root / "train", n_train, seed=0, **kwargs)
    write_instance_split(root / "valid", n_val, seed=1, **kwargs)
    return root


def edit_annotation(root: Path, split: str, index: int, **changes: Any) -> None:
    """Change (``None``: remove) fields of annotation ``index`` in ``root/split``'s json."""
    file = root / split / "_annotations.coco.json"
    coco = json.loads(file.read_text())
    for key, value in changes.items():
        if value is None:
            coco["annotations"][index].pop(key, None)
        else:
            coco["annotations"][index][key] = value
    file.write_text(json.dumps(coco))
