"""Generated detection data (COCO folders and cppe-5-style datasets) and a tiny FDConv ResNet for the detection tests.

Images are dark noise with bright, class-coloured rectangles, so a few dozen training steps give a detector
something it can learn. ``TINY_BACKBONE`` is a registered timm FDConv ResNet with one block per stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

from fdconv_zoo.timm_models._builder import build_fdconv_model

TINY_BACKBONE = "tiny_resnet_for_detection_tests"  # no "fdconv" in it: other tests list the *fdconv* models
COLOURS = ((255, 64, 64), (64, 255, 64), (64, 64, 255))
SOURCE_IDS = (3, 7, 11)  # non-contiguous COCO category ids
NAMES = ("red", "green", "blue")
TINY_DETECTOR = dict(
    d_model=32,
    encoder_hidden_dim=32,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    num_queries=20,
    num_denoising=10,
    decoder_in_channels=[32, 32, 32],
)

default_cfgs = generate_default_cfgs(
    {
        f"{TINY_BACKBONE}.untrained": dict(
            num_classes=10, input_size=(3, 64, 64), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
        )
    }
)


@register_model
def tiny_resnet_for_detection_tests(pretrained: bool = False, **kwargs: Any):
    """A ResNet with one FDConv BasicBlock per stage (32-128 channels): a backbone that trains in seconds."""
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(32, 48, 64, 128), stem_width=16, num_classes=10)
    return build_fdconv_model(
        ResNet, TINY_BACKBONE, pretrained, fdconv_patterns=("layer*.*.conv1", "layer*.*.conv2"), **{**args, **kwargs}
    )


def draw(rng: np.random.Generator, size: tuple[int, int], n_objects: int) -> tuple[Image.Image, list[tuple]]:
    """An image of ``size`` (width, height) with up to ``n_objects`` non-overlapping rectangles: (bbox, class)."""
    width, height = size
    pixels = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    objects = []
    for slot in range(n_objects):
        cls = int(rng.integers(0, len(COLOURS)))
        x0 = int(slot * width / n_objects) + 2
        w = int(rng.integers(width // (2 * n_objects), width // n_objects - 4))
        h = int(rng.integers(height // 4, height // 2))
        y0 = int(rng.integers(0, height - h))
        pixels[y0 : y0 + h, x0 : x0 + w] = COLOURS[cls]
        objects.append(((x0, y0, w, h), cls))
    return Image.fromarray(pixels), objects


def write_coco_split(
    folder: Path,
    n_images: int,
    *,
    seed: int,
    size: tuple[int, int] = (128, 128),
    json_name: str = "_annotations.coco.json",
) -> dict[str, Any]:
    """A split folder: images plus a COCO json with ids 3/7/11, one image without objects; returns the json."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n_images):
        image, objects = draw(rng, size, 0 if i == 0 else int(rng.integers(1, 3)))
        image.save(folder / f"img{i}.png")
        images.append({"id": i + 1, "file_name": f"img{i}.png", "width": size[0], "height": size[1]})
        for bbox, cls in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": SOURCE_IDS[cls],
                    "bbox": list(bbox),
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for i, n in zip(SOURCE_IDS, NAMES, strict=True)],
    }
    (folder / json_name).write_text(json.dumps(coco))
    return coco


def write_coco_folder(root: Path, n_train: int = 8, n_val: int = 4, **kwargs: Any) -> Path:
    write_coco_split(root / "train", n_train, seed=0, **kwargs)
    write_coco_split(root / "valid", n_val, seed=1, **kwargs)
    return root


def tiny_checkpoint(folder: Path, seed: int = 0) -> str:
    """A randomly initialised tiny FDConv ResNet classifier saved in timm's Hub format; its ``local-dir:`` name."""
    import timm
    import torch

    from fdconv_zoo.timm_models import save_fdconv_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(TINY_BACKBONE)
    with torch.no_grad():  # batch-norm statistics and scales away from their defaults, to be seen when loaded
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and ("bn" in name or "running" in name):
                tensor.uniform_(0.5, 1.5)
    save_fdconv_for_hf(model, folder)
    return f"local-dir:{folder}"
