"""Fine-tune an FDConv semantic-segmentation model with Hugging Face Trainer on a ``datasets`` dataset.

Models are transformers models: an FDConv SegFormer (``fdconv_segformer``; a native ``segformer`` checkpoint
such as ``nvidia/mit-b0`` or ``nvidia/segformer-b0-finetuned-ade-512-512`` is converted while it loads) or a
UperNet whose backbone is FDConv (a native ConvNeXt/Swin/ResNet UperNet backbone is converted the same way).
Images and masks go through the checkpoint's ``SegformerImageProcessor`` (resize, normalise, optional
``reduce_labels``); mask value 255 is ignored by the loss and the metrics. The result is a
``save_pretrained`` folder (model, image processor, model card) that
``AutoModelForSemanticSegmentation.from_pretrained`` loads after ``import fdconv_zoo``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import FinetuneInputError
from .images import to_model_image
from .segmentation_data import load_semantic_segmentation_dataset
from .segmentation_eval import SegmentationMetrics, logits_to_predictions, segmentation_metrics
from .segmentation_masks import mask_array, resolve_classes
from .segmentation_model import checkpoint_converting_trainer, load_config, load_model, load_processor, num_channels
from .trainer_flow import Report, TrainedRun, TrainingPlan, TrainingSetup, run_finetune

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

__all__ = ["SegmentationFinetuneResult", "finetune_segmentation"]

_logger = logging.getLogger(__name__)


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
    skip_bad_images: bool = False,
) -> SegmentationFinetuneResult:
    """Fine-tune ``model_name`` on ``dataset`` and save it to ``output_dir/model``.

    The classes are ``id2label``, else ``num_labels`` (named by their ids), else the dataset's names (see
    :func:`load_semantic_segmentation_dataset`), else the largest mask value + 1. Every mask is checked
    before training: a value outside the classes (other than 255) is refused with the fix, and so is an image
    or mask that cannot be read (with ``skip_bad_images``, its example is left out instead).
    ``reduce_labels=None`` keeps the checkpoint processor's setting. Checkpoints go to
    ``output_dir/checkpoints`` every epoch and a re-run resumes from them; an existing ``output_dir/model``
    is only replaced with ``overwrite=True``. Under ``torchrun`` only the main process writes.
    """
    plan = TrainingPlan(Path(output_dir), epochs, batch_size, learning_rate, seed, overwrite)
    prepare = partial(
        _prepare,
        model_name,
        dataset,
        image_size=image_size,
        num_labels=num_labels,
        id2label=id2label,
        reduce_labels=reduce_labels,
        image_column=image_column,
        mask_column=mask_column,
        seed=seed,
        skip_bad_images=skip_bad_images,
    )
    return run_finetune(plan, prepare)


def _prepare(
    model_name: str,
    dataset: str,
    *,
    image_size: int | None,
    num_labels: int | None,
    id2label: Mapping[int, str] | None,
    reduce_labels: bool | None,
    image_column: str | None,
    mask_column: str | None,
    seed: int,
    skip_bad_images: bool,
) -> TrainingSetup[SegmentationFinetuneResult]:
    """The checkpoint's processor and config, the dataset and its checked classes, the model with their head."""
    config = load_config(model_name)
    processor = load_processor(model_name, image_size, reduce_labels)
    reduce = bool(processor.do_reduce_labels)
    if reduce and reduce_labels is None:
        _logger.info(
            "reduce_labels is on (the checkpoint's image processor): mask value 0 is unlabelled, class c is c - 1; --no-reduce-labels turns it off"
        )
    data, dataset_names = load_semantic_segmentation_dataset(
        dataset, image_column=image_column, mask_column=mask_column, seed=seed, skip_bad_images=skip_bad_images
    )
    classes = resolve_classes(
        data, dataset, dataset_names, id2label=id2label, num_labels=num_labels, reduce_labels=reduce
    )
    model = load_model(model_name, config, classes)
    channels = num_channels(model.config)
    metrics = SegmentationMetrics(len(classes))
    return TrainingSetup(
        model=model,
        train_data=data["train"].with_transform(_transform(processor, channels, train=True)),
        test_data=data["test"].with_transform(_transform(processor, channels, train=False)),
        collate=_collate,
        compute_metrics=metrics,
        report=partial(
            _report, model_name=model_name, dataset=dataset, processor=processor, metrics=metrics, id2label=classes
        ),
        check_split="test",  # the train transform draws random flips
        trainer_class=checkpoint_converting_trainer(),
        trainer_kwargs=dict(preprocess_logits_for_metrics=logits_to_predictions, processing_class=processor),
        argument_overrides=dict(batch_eval_metrics=True),
    )


def _transform(processor: Any, channels: int, train: bool) -> Callable[[dict[str, list]], dict[str, Any]]:
    def batch_transform(batch: dict[str, list]) -> dict[str, Any]:
        images = [to_model_image(image, channels) for image in batch["image"]]
        masks = [mask_array(mask) for mask in batch["annotation"]]
        for image, mask in zip(images, masks, strict=True):
            if (image.height, image.width) != mask.shape:
                raise FinetuneInputError(
                    f"an image of {image.width}x{image.height} pixels has a {mask.shape[1]}x{mask.shape[0]} mask: each mask must have its image's size"
                )
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


def _report(
    run: TrainedRun,
    *,
    model_name: str,
    dataset: str,
    processor: Any,
    metrics: SegmentationMetrics,
    id2label: Mapping[int, str],
) -> Report[SegmentationFinetuneResult]:
    """The result with per-class IoU, a ``save_pretrained`` folder (model, processor, card) and the table rows."""
    scores = run.metrics
    _, iou = segmentation_metrics(metrics.confusion)
    per_class = {id2label[i]: float(v) for i, v in enumerate(iou)}
    result = SegmentationFinetuneResult(
        model_name,
        scores["eval_mean_iou"],
        scores["eval_pixel_accuracy"],
        scores["eval_loss"],
        run.parameters,
        run.train_seconds,
        run.saved_to,
        run.setup.model,
        per_class,
    )
    dataset_label = Path(dataset).name if Path(dataset).is_dir() else dataset
    title = f"{Path(model_name).name if Path(model_name).is_dir() else model_name} fine-tuned on {dataset_label}"
    plan, reduce = run.plan, bool(processor.do_reduce_labels)
    card_fields = dict(
        model_name=title,
        epochs=f"{plan.epochs:g}",
        batch_size=plan.batch_size,
        lr=f"{plan.learning_rate:g}",
        image_size=processor.size["height"],
        reduce_labels=reduce,
        test_examples=len(run.setup.test_data),
        mean_iou=f"{result.mean_iou:.4f}",
        pixel_accuracy=f"{result.pixel_accuracy:.4f}",
        mean_accuracy=f"{scores['eval_mean_accuracy']:.4f}",
        eval_loss=f"{result.eval_loss:.4f}",
        parameters=f"{run.parameters:,}",
        per_class="\n".join(f"| {name} | {value:.4f} |" for name, value in per_class.items()),
    )
    rows = [
        ("mean IoU", f"{result.mean_iou:.4f}"),
        ("pixel accuracy", f"{result.pixel_accuracy:.4f}"),
        ("mean class accuracy", f"{scores['eval_mean_accuracy']:.4f}"),
        ("eval loss", f"{result.eval_loss:.4f}"),
        ("train loss", f"{run.train_loss:.4f}"),
        *((f"IoU {name}", f"{value:.4f}") for name, value in per_class.items()),
    ]

    def save_model(folder: Path) -> None:
        run.trainer.model.save_pretrained(folder)
        processor.save_pretrained(folder)

    card_data = _card_data(model_name, dataset, dataset_label, title, result)
    return Report(result, title, rows, card_data, _CARD, card_fields, save_model)


def _card_data(
    model_name: str, dataset: str, dataset_label: str, title: str, result: SegmentationFinetuneResult
) -> ModelCardData:
    """The card's metadata, with mIoU and pixel accuracy in its ``model-index``."""
    from huggingface_hub import EvalResult, ModelCardData

    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["fdconv", "image-segmentation", "semantic-segmentation", "fdconv-zoo"],
        datasets=None if Path(dataset).is_dir() else [dataset],
        base_model=None if Path(model_name).is_dir() else model_name,
        metrics=["mean_iou", "accuracy"],
        model_name=title,
        eval_results=[
            EvalResult(
                task_type="image-segmentation",
                dataset_type=dataset_label,
                dataset_name=dataset_label,
                metric_type="mean_iou",
                metric_name="mIoU",
                metric_value=round(result.mean_iou, 4),
            ),
            EvalResult(
                task_type="image-segmentation",
                dataset_type=dataset_label,
                dataset_name=dataset_label,
                metric_type="accuracy",
                metric_name="pixel accuracy",
                metric_value=round(result.pixel_accuracy, 4),
            ),
        ],
    )
