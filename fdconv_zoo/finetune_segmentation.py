"""Fine-tune an FDConv semantic-segmentation model with Hugging Face Trainer on a ``datasets`` dataset.

Models are transformers models: an FDConv SegFormer (``fdconv_segformer``; a native ``segformer`` checkpoint
such as ``nvidia/mit-b0`` or ``nvidia/segformer-b0-finetuned-ade-512-512`` is converted while it loads) or a
UperNet whose backbone is FDConv (a native ConvNeXt/Swin/ResNet UperNet backbone is converted the same way).
Images and masks go through the checkpoint's ``SegformerImageProcessor`` (resize, normalise, optional
``reduce_labels``); mask value 255 is ignored by the loss and the metrics. Mean IoU and pixel accuracy come
from a confusion matrix accumulated batch by batch, so evaluation memory does not grow with the dataset.
The result is a ``save_pretrained`` folder (model, image processor, model card) that
``AutoModelForSemanticSegmentation.from_pretrained`` loads after ``import fdconv_zoo``.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .finetune import (
    FinetuneInputError,
    _is_saved_dataset,
    _has_checkpoint,
    _load_hub_dataset,
    _refuse_to_overwrite,
    _save_atomically,
    _training_arguments,
    log_metrics_table,
    to_model_image,
)

__all__ = [
    "IGNORE_INDEX",
    "SegmentationFinetuneResult",
    "SegmentationMetrics",
    "confusion_matrix",
    "finetune_segmentation",
    "load_semantic_segmentation_dataset",
    "mask_label_counts",
    "segmentation_metrics",
]

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255  # unlabelled pixels: no loss, not counted by the metrics (SegformerImageProcessor's convention)
IMAGE_COLUMNS = ("image", "pixel_values", "img")
MASK_COLUMNS = ("annotation", "label", "mask", "segmentation_mask", "semantic_map")
_LAYOUT_MASK_FOLDERS = ("annotations", "masks", "labels")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
# Native UperNet backbones with an FDConv twin (model type fdconv_<type>), converted while loading.
_CONVERTIBLE_BACKBONES = ("convnext", "swin", "resnet")


@dataclass
class SegmentationFinetuneResult:
    model_name: str
    mean_iou: float
    pixel_accuracy: float
    eval_loss: float
    parameters: int
    train_seconds: float
    saved_to: Path
    model: torch.nn.Module  # the trained transformers model
    per_class_iou: dict[str, float] = field(default_factory=dict)  # NaN: class absent from labels and predictions


# --------------------------------------------------------------------------------------------- data
def load_semantic_segmentation_dataset(
    name_or_path: str,
    *,
    image_column: str | None = None,
    mask_column: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
) -> tuple[Any, dict[int, str] | None]:
    """``(DatasetDict(train, test), id2label or None)``; both splits have exactly ``image`` and ``annotation``.

    ``name_or_path``: a folder written by ``save_to_disk``, a folder of ``images/`` + ``annotations/`` (or
    ``masks/``, ``labels/``) files paired by name, optionally inside ``train/``, ``validation/``, ``test/``,
    or a dataset name on the Hub. The evaluation split is ``validation``, else ``test``, else a ``test_size``
    share of ``train``. Class names come from a mask column of ``ClassLabel`` values or an ``id2label.json``
    beside the data (in the folder or the Hub repo, the convention of the transformers examples).
    """
    from datasets import Dataset, DatasetDict

    path = Path(name_or_path)
    if _is_saved_dataset(path):
        from datasets import load_from_disk

        data = load_from_disk(str(path))
    elif path.is_dir():
        data = _load_folder_layout(path)
    else:
        data = _load_hub_dataset(name_or_path, "a folder written by dataset.save_to_disk, a folder of images/ + annotations/")
    if isinstance(data, Dataset):
        data = DatasetDict(train=data)
    if "train" not in data:
        raise FinetuneInputError(f"dataset {name_or_path!r} has no 'train' split (splits: {list(data)})")
    columns = data["train"].column_names
    image_column = _pick_column(columns, image_column, IMAGE_COLUMNS, "image", name_or_path)
    mask_column = _pick_column(columns, mask_column, MASK_COLUMNS, "mask", name_or_path)
    _check_mask_feature(data["train"].features[mask_column], mask_column, name_or_path)
    id2label = _class_names(data["train"].features[mask_column]) or _id2label_file(name_or_path, path)

    def canonical(split: Any) -> Any:
        split = split.select_columns([image_column, mask_column])
        renames = {old: new for old, new in ((image_column, "image"), (mask_column, "annotation")) if old != new}
        return split.rename_columns(renames) if renames else split

    for split in ("validation", "test"):
        if split in data and mask_column in data[split].column_names:
            return DatasetDict(train=canonical(data["train"]), test=canonical(data[split])), id2label
    split = data["train"].train_test_split(test_size=test_size, seed=seed)
    return DatasetDict(train=canonical(split["train"]), test=canonical(split["test"])), id2label


def _load_folder_layout(root: Path) -> Any:
    """``images/`` + ``annotations/`` folders (files paired by name), at the root or per split folder."""
    from datasets import Dataset, DatasetDict, Features, Image

    split_dirs = {"val": "validation", "valid": "validation"}
    roots = {split_dirs.get(d.name, d.name): d for d in sorted(root.iterdir()) if d.is_dir() and (d / "images").is_dir()}
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
            raise FinetuneInputError(f"{folder} has images/ but no mask folder: add one of {', '.join(_LAYOUT_MASK_FOLDERS)}/ with a mask per image")
        images = {p.stem: p for p in sorted((folder / "images").iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES}
        masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES}
        unpaired = sorted(set(images) ^ set(masks))
        if unpaired:
            raise FinetuneInputError(f"{folder}: {len(unpaired)} images or masks have no partner of the same name (e.g. {unpaired[:3]})")
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
            raise FinetuneInputError(f"dataset {dataset!r} has no column {chosen!r} (--{kind}-column); its columns: {columns}")
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
        return _parse_id2label(file.read_text(), str(file)) if file.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        file = hf_hub_download(name_or_path, "id2label.json", repo_type="dataset")
    except Exception:  # noqa: BLE001  (no such file, or offline and not cached: names are optional)
        return None
    return _parse_id2label(Path(file).read_text(), file)


def _parse_id2label(text: str, source: str) -> dict[int, str]:
    """``{"0": "background", ...}`` as ``{0: "background", ...}``; ids must be 0..n-1."""
    try:
        raw = json.loads(text)
        id2label = {int(k): str(v) for k, v in raw.items()}
    except (ValueError, AttributeError, TypeError) as error:
        raise FinetuneInputError(f"id2label from {source} is not a JSON object of id -> name ({error}): write it as {{\"0\": \"background\", \"1\": \"road\"}}") from None
    if sorted(id2label) != list(range(len(id2label))):
        raise FinetuneInputError(f"id2label from {source} must number its classes 0..{len(id2label) - 1}, got ids {sorted(id2label)[:10]}")
    return id2label


def _mask_array(mask: Any) -> np.ndarray:
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
        raise FinetuneInputError(f"a mask of dtype {array.dtype} holds non-integer values: masks are maps of integer class ids")
    return array


def _reduced(values: np.ndarray) -> np.ndarray:
    """SegformerImageProcessor's ``reduce_labels``: 0 (background) -> 255, every other id -> id - 1, 255 stays."""
    return np.where((values == 0) | (values == IGNORE_INDEX), IGNORE_INDEX, values - 1)


def mask_label_counts(masks: Any, *, reduce_labels: bool = False, description: str = "masks") -> dict[int, tuple[int, int, int]]:
    """``{label: (pixels, masks, first example)}`` over a sequence of masks, after ``reduce_labels``.

    Every mask is read once (with a progress bar), so label problems surface before any training.
    """
    pixels: dict[int, int] = {}
    images: dict[int, int] = {}
    first: dict[int, int] = {}
    for index, mask in enumerate(tqdm(masks, desc=f"checking {description}", unit="mask", leave=False)):
        array = _mask_array(mask)
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


def _check_labels(counts: Mapping[str, Mapping[int, tuple[int, int, int]]], num_labels: int, dataset: str, reduce_labels: bool) -> None:
    """Refuse mask values outside ``0..num_labels-1`` (other than 255) before training, naming the fix."""
    bad = {
        split: {v: c for v, c in split_counts.items() if (v < 0 or v >= num_labels) and v != IGNORE_INDEX}
        for split, split_counts in counts.items()
    }
    bad = {split: values for split, values in bad.items() if values}
    if not bad:
        return
    described = "; ".join(
        f"{split}: " + ", ".join(f"{v} ({p:,} pixels in {m} masks, first in example {i})" for v, (p, m, i) in list(values.items())[:8])
        for split, values in bad.items()
    )
    largest = max(v for values in bad.values() for v in values)
    hints = []
    if not reduce_labels and largest == num_labels and any(0 in c for c in counts.values()):
        hints.append(f"if 0 marks unlabelled pixels and the classes are 1..{num_labels}, pass --reduce-labels (reduce_labels=True)")
    hints.append(f"pass --num-labels {largest + 1} (or an --id2label naming every class)")
    hints.append(f"or set those pixels to {IGNORE_INDEX} (ignored) in the masks")
    raise FinetuneInputError(
        f"masks of {dataset!r} hold values outside the {num_labels} classes 0..{num_labels - 1} and {IGNORE_INDEX} (ignored)"
        f"{' after reduce_labels' if reduce_labels else ''}: {described}. Fix: {'; '.join(hints)}"
    )


# ------------------------------------------------------------------------------------------ metrics
def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(num_labels, num_labels) pixel counts, rows = true class, columns = predicted; labels outside
    ``0..num_labels-1`` (255 ignored pixels, -100 padding) are not counted."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels, device=torch.as_tensor(predictions).device)
    valid = (labels >= 0) & (labels < num_labels)
    index = labels[valid].long() * num_labels + predictions[valid].long()
    return torch.bincount(index, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def segmentation_metrics(confusion: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """``({mean_iou, pixel_accuracy, mean_accuracy}, per-class IoU)`` of a confusion matrix.

    A class that is neither in the labels nor in the predictions has no IoU (NaN) and is left out of the
    means, as in the ``evaluate`` library's ``mean_iou``.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    per_label = confusion.sum(1)
    union = per_label + confusion.sum(0) - true_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positives / union, np.nan)
        accuracy = np.where(per_label > 0, true_positives / per_label, np.nan)
    total = confusion.sum()
    metrics = {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(true_positives.sum() / total) if total else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan"),
    }
    return metrics, iou


class SegmentationMetrics:
    """Trainer ``compute_metrics`` for ``batch_eval_metrics=True``: adds each batch to a confusion matrix and
    reports mean IoU and pixel accuracy at the last batch. ``confusion`` keeps the last evaluation's matrix."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        self._running: torch.Tensor | None = None
        self.confusion: np.ndarray | None = None

    def __call__(self, prediction: Any, compute_result: bool = True) -> dict[str, float]:
        batch = confusion_matrix(prediction.predictions, prediction.label_ids, self.num_labels)
        self._running = batch if self._running is None else self._running + batch
        if not compute_result:
            return {}
        self.confusion, self._running = self._running.cpu().numpy(), None
        return segmentation_metrics(self.confusion)[0]


def _logits_to_predictions(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """Class ids at the label resolution (SegFormer's logits are 1/4 size): what the metrics compare."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(1)


# -------------------------------------------------------------------------------------------- model
def _load_config(model_name: str) -> Any:
    """The checkpoint's config, refused with the fix when it is missing or not a supported segmentation model."""
    from transformers import AutoConfig

    import fdconv_zoo  # noqa: F401  (registers the FDConv model types)

    fix = (
        "--model takes a checkpoint folder written by save_pretrained, or a Hub id of a SegFormer (e.g. "
        "nvidia/segformer-b0-finetuned-ade-512-512, nvidia/mit-b0) or of an UperNet (e.g. openmmlab/upernet-convnext-tiny); "
        "offline, a Hub id must already be in the local cache"
    )
    path = Path(model_name).expanduser()
    if not path.is_dir() and (path.is_absolute() or model_name.startswith((".", "~")) or model_name.count("/") > 1):
        raise FinetuneInputError(f"there is no model folder {model_name}; {fix}")
    try:
        config = AutoConfig.from_pretrained(model_name)
    except (OSError, ValueError) as error:
        raise FinetuneInputError(f"cannot load model {model_name!r}: {error}\n{fix}") from None
    if config.model_type in ("segformer", "fdconv_segformer"):
        return config
    if config.model_type == "upernet":
        backbone = config.backbone_config.model_type
        if backbone.startswith("fdconv_") or backbone in _CONVERTIBLE_BACKBONES:
            return config
        raise FinetuneInputError(
            f"{model_name!r} is an UperNet with a {backbone!r} backbone, which has no FDConv variant; FDConv backbones: "
            f"{', '.join(f'fdconv_{b}' for b in _CONVERTIBLE_BACKBONES)} (native {', '.join(_CONVERTIBLE_BACKBONES)} backbones are converted)"
        )
    raise FinetuneInputError(
        f"{model_name!r} is a {config.model_type!r} model, not a semantic-segmentation model fine-tune-segmentation "
        "takes: use a SegFormer (segformer, fdconv_segformer) or an UperNet checkpoint (README: 'Semantic segmentation "
        "with UperNet' builds one with an FDConv backbone)"
    )


def _num_channels(config: Any) -> int:
    return getattr(config.backbone_config, "num_channels", 3) if config.model_type == "upernet" else config.num_channels


def _load_processor(model_name: str, image_size: int | None, reduce_labels: bool | None) -> Any:
    """The checkpoint's SegformerImageProcessor (or one with its mean/std), sized and with ``reduce_labels`` set."""
    from transformers import AutoImageProcessor, SegformerImageProcessor

    try:
        loaded = AutoImageProcessor.from_pretrained(model_name)
    except (OSError, ValueError):  # no preprocessor_config.json: SegFormer's defaults (ImageNet mean/std)
        loaded = None
    if loaded is not None and type(loaded).__name__.startswith("SegformerImageProcessor"):
        processor = loaded
    else:
        stats = {k: getattr(loaded, k) for k in ("image_mean", "image_std") if getattr(loaded, k, None) is not None}
        processor = SegformerImageProcessor(**stats)
    if image_size is not None:
        processor.size = {"height": image_size, "width": image_size}
    if reduce_labels is not None:
        processor.do_reduce_labels = reduce_labels
    return processor


def _load_model(model_name: str, config: Any, id2label: dict[int, str]) -> torch.nn.Module:
    """The model with a head for ``id2label`` (replaced when the checkpoint's differs in size), FDConv inside."""
    from transformers import UperNetForSemanticSegmentation

    from .transformers_models.segformer import FDConvSegformerForSemanticSegmentation

    labels = dict(id2label=id2label, label2id={v: k for k, v in id2label.items()}, ignore_mismatched_sizes=True)
    if config.model_type in ("segformer", "fdconv_segformer"):  # a native config is read as FDConv, converted on load
        return FDConvSegformerForSemanticSegmentation.from_pretrained(model_name, semantic_loss_ignore_index=IGNORE_INDEX, **labels)
    model = UperNetForSemanticSegmentation.from_pretrained(model_name, loss_ignore_index=IGNORE_INDEX, **labels)
    if config.backbone_config.model_type.startswith("fdconv_"):
        return model
    return _with_fdconv_backbone(model)


def _with_fdconv_backbone(native: torch.nn.Module) -> torch.nn.Module:
    """A native UperNet with its backbone replaced by the FDConv twin, loaded through the twin's own
    load-time conversion (so it computes the native model's function until its attentions train)."""
    from transformers import AutoBackbone, UperNetForSemanticSegmentation
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fdconv_config_class = CONFIG_MAPPING[f"fdconv_{native.config.backbone_config.model_type}"]
    backbone_class = AutoBackbone._model_mapping[fdconv_config_class]
    with tempfile.TemporaryDirectory(prefix="fdconv-backbone-") as folder:
        native.backbone.save_pretrained(folder)
        backbone = backbone_class.from_pretrained(folder)
    config = copy.deepcopy(native.config)
    config.backbone_config = backbone.config
    model = UperNetForSemanticSegmentation(config)
    state = {k: v for k, v in native.state_dict().items() if not k.startswith("backbone.")}
    state.update({f"backbone.{k}": v for k, v in backbone.state_dict().items()})
    model.load_state_dict(state)
    _logger.info("converted the UperNet backbone %s to %s", type(native.backbone).__name__, backbone_class.__name__)
    return model


# ---------------------------------------------------------------------------------------- fine-tune
def _trainer_class() -> type:
    from transformers import Trainer

    class CheckpointConvertingTrainer(Trainer):
        """Trainer whose resume loads the checkpoint through ``from_pretrained``.

        ``save_pretrained`` writes SegFormer checkpoints in the Hub's original key layout (``encoder.block.*``,
        ``mlp.dense1``), but Trainer (transformers 5.23) resumes with a plain non-strict ``load_state_dict``,
        which matches none of those keys and silently restarts from the initial weights. ``from_pretrained``
        applies the registered key conversions; the strict copy then fails loudly on any mismatch.
        """

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
            model = self.model if model is None else model
            if self.is_fsdp_enabled or not hasattr(model, "from_pretrained"):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            loaded = type(model).from_pretrained(resume_from_checkpoint)
            model.load_state_dict(loaded.state_dict())
            return None

    return CheckpointConvertingTrainer


def _transform(processor: Any, channels: int, train: bool):
    def batch_transform(batch: dict[str, list]) -> dict[str, Any]:
        images = [to_model_image(image, channels) for image in batch["image"]]
        masks = [_mask_array(mask) for mask in batch["annotation"]]
        for image, mask in zip(images, masks, strict=True):
            if (image.height, image.width) != mask.shape:
                raise FinetuneInputError(f"an image of {image.width}x{image.height} pixels has a {mask.shape[1]}x{mask.shape[0]} mask: each mask must have its image's size")
        if train:  # random horizontal flips, the one augmentation that suits every segmentation dataset
            flips = [random.random() < 0.5 for _ in images]
            images = [i.transpose(0) if f else i for i, f in zip(images, flips, strict=True)]  # 0: FLIP_LEFT_RIGHT
            masks = [np.ascontiguousarray(m[:, ::-1]) if f else m for m, f in zip(masks, flips, strict=True)]
        masks = [m if m.dtype == np.uint8 else m.astype(np.int64) for m in masks]
        encoded = processor(images=images, segmentation_maps=masks, return_tensors="pt")
        return {"pixel_values": list(encoded["pixel_values"]), "labels": list(encoded["labels"])}

    return batch_transform


def _collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.stack([e["labels"] for e in examples]).long(),
    }


_CARD = """---
{{ card_data }}
---

# {{ model_name }}

Semantic segmentation with FDConv (Frequency Dynamic Convolution, [CVPR 2025](https://arxiv.org/abs/2503.18783)),
fine-tuned with fdconv-zoo's `fdconv-zoo finetune-segmentation` (HF Trainer, {{ epochs }} epochs, batch size
{{ batch_size }}, learning rate {{ lr }}, {{ image_size }} px inputs, reduce_labels {{ reduce_labels }}; mask value
255 is ignored).

| metric ({{ test_examples }} held-out images) | value |
|---|---|
| mean IoU | {{ mean_iou }} |
| pixel accuracy | {{ pixel_accuracy }} |
| mean class accuracy | {{ mean_accuracy }} |
| eval loss | {{ eval_loss }} |
| parameters | {{ parameters }} |

| class | IoU |
|---|---|
{{ per_class }}

```python
import fdconv_zoo  # registers the FDConv models with transformers' Auto classes
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

model = AutoModelForSemanticSegmentation.from_pretrained("<this folder or repo>")
processor = AutoImageProcessor.from_pretrained("<this folder or repo>")
```
"""


def finetune_segmentation(
    model_name: str,
    dataset: str,
    output_dir: str | Path,
    *,
    epochs: float = 3,
    batch_size: int = 8,
    learning_rate: float = 6e-5,
    image_size: int | None = None,
    num_labels: int | None = None,
    id2label: Mapping[int, str] | None = None,
    reduce_labels: bool | None = None,
    image_column: str | None = None,
    mask_column: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> SegmentationFinetuneResult:
    """Fine-tune ``model_name`` on ``dataset`` and save it to ``output_dir/model``.

    The classes are ``id2label``, else ``num_labels`` (named by their ids), else the dataset's names (see
    :func:`load_semantic_segmentation_dataset`), else the largest mask value + 1. Every mask is checked
    before training: a value outside the classes (other than 255) is refused with the fix.
    ``reduce_labels=None`` keeps the checkpoint processor's setting. Checkpoints go to
    ``output_dir/checkpoints`` every epoch and a re-run resumes from them; an existing ``output_dir/model``
    is only replaced with ``overwrite=True``. Under ``torchrun`` only the main process writes.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    from transformers import set_seed

    set_seed(seed)
    output_dir = Path(output_dir)
    saved = _refuse_to_overwrite(output_dir, overwrite)
    config = _load_config(model_name)
    processor = _load_processor(model_name, image_size, reduce_labels)
    reduce = bool(processor.do_reduce_labels)
    if reduce and reduce_labels is None:
        _logger.info("reduce_labels is on (the checkpoint's image processor): mask value 0 is unlabelled, class c is c - 1; --no-reduce-labels turns it off")
    data, dataset_names = load_semantic_segmentation_dataset(dataset, image_column=image_column, mask_column=mask_column, seed=seed)
    if id2label is not None:
        id2label = _parse_id2label(json.dumps({str(k): v for k, v in id2label.items()}), "id2label")
        if num_labels is not None and num_labels != len(id2label):
            raise FinetuneInputError(f"--num-labels {num_labels} disagrees with the {len(id2label)} classes of --id2label: give one of them")
    counts = {split: mask_label_counts(data[split]["annotation"], reduce_labels=reduce, description=f"{split} masks") for split in data}
    if id2label is None and num_labels is not None:
        id2label = {i: str(i) for i in range(num_labels)}
    if id2label is None:
        id2label = dataset_names
    if id2label is None:
        seen = [v for c in counts.values() for v in c if 0 <= v != IGNORE_INDEX]
        if not seen:
            raise FinetuneInputError(f"every mask pixel of {dataset!r} is {IGNORE_INDEX} (ignored){' after reduce_labels' if reduce else ''}: nothing to learn")
        id2label = {i: str(i) for i in range(max(seen) + 1)}
        _logger.info("%d classes: the largest mask value + 1 (name them with --id2label or --num-labels)", len(id2label))
    _check_labels(counts, len(id2label), dataset, reduce)

    model = _load_model(model_name, config, id2label)
    channels = _num_channels(model.config)
    train_data = data["train"].with_transform(_transform(processor, channels, train=True))
    test_data = data["test"].with_transform(_transform(processor, channels, train=False))
    _collate([test_data[0]])  # the first example goes through the whole pipeline before any training
    metrics_fn = SegmentationMetrics(len(id2label))
    checkpoints = output_dir / "checkpoints"
    args = _training_arguments(
        checkpoints, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, batch_eval_metrics=True
    )
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=test_data,
        data_collator=_collate,
        compute_metrics=metrics_fn,
        preprocess_logits_for_metrics=_logits_to_predictions,
        processing_class=processor,
    )
    resume = _has_checkpoint(checkpoints)
    start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    _, iou = segmentation_metrics(metrics_fn.confusion)
    per_class = {id2label[i]: float(v) for i, v in enumerate(iou)}

    parameters = sum(p.numel() for p in model.parameters())
    result = SegmentationFinetuneResult(
        model_name, metrics["eval_mean_iou"], metrics["eval_pixel_accuracy"], metrics["eval_loss"], parameters, seconds, saved, model, per_class
    )
    if not trainer.is_world_process_zero():  # distributed runs: one writer
        return result
    size = processor.size["height"]
    dataset_label = Path(dataset).name if Path(dataset).is_dir() else dataset
    title = f"{Path(model_name).name if Path(model_name).is_dir() else model_name} fine-tuned on {dataset_label}"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["fdconv", "image-segmentation", "semantic-segmentation", "fdconv-zoo"],
        datasets=None if Path(dataset).is_dir() else [dataset],
        base_model=None if Path(model_name).is_dir() else model_name,
        metrics=["mean_iou", "accuracy"],
        model_name=title,
        eval_results=[
            EvalResult(task_type="image-segmentation", dataset_type=dataset_label, dataset_name=dataset_label,
                       metric_type="mean_iou", metric_name="mIoU", metric_value=round(result.mean_iou, 4)),
            EvalResult(task_type="image-segmentation", dataset_type=dataset_label, dataset_name=dataset_label,
                       metric_type="accuracy", metric_name="pixel accuracy", metric_value=round(result.pixel_accuracy, 4)),
        ],
    )
    card = ModelCard.from_template(
        card_data, template_str=_CARD,
        model_name=title, epochs=f"{epochs:g}", batch_size=batch_size, lr=f"{learning_rate:g}",
        image_size=size, reduce_labels=reduce, test_examples=len(data["test"]),
        mean_iou=f"{result.mean_iou:.4f}", pixel_accuracy=f"{result.pixel_accuracy:.4f}",
        mean_accuracy=f"{metrics['eval_mean_accuracy']:.4f}", eval_loss=f"{result.eval_loss:.4f}", parameters=f"{parameters:,}",
        per_class="\n".join(f"| {name} | {value:.4f} |" for name, value in per_class.items()),
    )

    def write(folder: Path) -> None:
        trainer.model.save_pretrained(folder)
        processor.save_pretrained(folder)
        card.save(folder / "README.md")

    _save_atomically(saved, write)
    log_metrics_table(
        f"{title} ({len(data['test'])} held-out images):",
        [
            ("mean IoU", f"{result.mean_iou:.4f}"),
            ("pixel accuracy", f"{result.pixel_accuracy:.4f}"),
            ("mean class accuracy", f"{metrics['eval_mean_accuracy']:.4f}"),
            ("eval loss", f"{result.eval_loss:.4f}"),
            ("train loss", f"{train_output.training_loss:.4f}"),
            *((f"IoU {name}", f"{value:.4f}") for name, value in per_class.items()),
            ("epochs", f"{epochs:g}"),
            ("train seconds", f"{seconds:.0f}"),
            ("parameters", f"{parameters:,}"),
            ("saved to", str(saved)),
        ],
    )
    return result
