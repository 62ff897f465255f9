"""Fine-tune Mask2Former on an FDConv backbone for instance segmentation with Hugging Face Trainer.

The flow is the one every fine-tune shares (:mod:`..trainer_flow`); the backbone loading, freezing defaults,
backbone learning-rate scale and resumption are the detection command's. This module supplies the COCO data
with masks, the model, COCO mask AP and the saved folder: a transformers model with its image processor,
``metrics.json`` and a card, which ``AutoModelForUniversalSegmentation`` and ``AutoImageProcessor`` load after
``import fdconv_zoo``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..coco_data import load_coco_dataset
from ..coco_options import check_backbone_options
from ..coco_report import coco_report
from ..detection.extra import require_detection_extra
from ..detection.inputs import round_image_size
from ..detection.model import freeze_backbone_defaults, load_backbone_source
from ..trainer_flow import Report, TrainedRun, TrainingPlan, TrainingSetup, run_finetune
from .inputs import InstanceInputs, collate, image_processor
from .metrics import SUMMARY_KEYS, InstanceMetrics
from .model import FEATURE_MAPS, build_mask2former
from .trainer import instance_trainer

__all__ = ["InstanceSegmentationFinetuneResult", "finetune_instance_segmentation"]

_logger = logging.getLogger(__name__)


@dataclass
class InstanceSegmentationFinetuneResult:
    """What :func:`finetune_instance_segmentation` returns: the final COCO scores, the trained model, where it went."""

    model_name: str
    metrics: dict[str, float]  # COCO summary: segm_map, segm_map_50, ..., bbox_map, ...; -1: no such objects
    eval_loss: float
    parameters: int
    train_seconds: float
    saved_to: Path
    model: torch.nn.Module  # the trained Mask2FormerForUniversalSegmentation
    per_class_map: dict[str, float] = field(default_factory=dict)  # mask AP by class name


def finetune_instance_segmentation(
    model_name: str,
    dataset: str | Path,
    output_dir: str | Path,
    *,
    epochs: float = 12,
    batch_size: int = 8,
    learning_rate: float = 1e-4,
    backbone_lr_scale: float = 0.1,
    image_size: int = 640,
    frozen_stages: int = 1,
    id2label: Mapping[int, str] | None = None,
    model_config: Mapping[str, Any] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    skip_bad_images: bool = False,
) -> InstanceSegmentationFinetuneResult:
    """Fine-tune Mask2Former on the backbone ``model_name`` with ``dataset``; save to ``output_dir/model``.

    ``model_name`` and the freezing, learning-rate, output and ``skip_bad_images`` conventions are those of
    :func:`~fdconv_zoo.finetune.detection.finetune_detection`. ``dataset``: a COCO folder (``train/`` +
    ``val/``) or a cppe-5-layout ``datasets`` dataset, every object with a ``segmentation`` (polygons or RLE);
    crowd regions are left out of training and ignored by the evaluation, as COCO does. ``model_config``
    overrides ``Mask2FormerConfig`` fields (e.g. ``num_queries``).
    """
    require_detection_extra("instance segmentation")
    check_backbone_options(image_size, backbone_lr_scale, frozen_stages)
    plan = TrainingPlan(Path(output_dir), epochs, batch_size, learning_rate, seed, overwrite)
    prepare = partial(
        _prepare,
        model_name,
        str(dataset),
        backbone_lr_scale=backbone_lr_scale,
        image_size=round_image_size(image_size),
        frozen_stages=frozen_stages,
        id2label=id2label,
        model_config=dict(model_config or {}),
        seed=seed,
        skip_bad_images=skip_bad_images,
    )
    return run_finetune(plan, prepare)


def _prepare(
    model_name: str,
    dataset: str,
    *,
    backbone_lr_scale: float,
    image_size: int,
    frozen_stages: int,
    id2label: Mapping[int, str] | None,
    model_config: dict[str, Any],
    seed: int,
    skip_bad_images: bool,
) -> TrainingSetup[InstanceSegmentationFinetuneResult]:
    data = load_coco_dataset(dataset, id2label=id2label, masks=True, skip_bad_images=skip_bad_images)
    source = load_backbone_source(model_name, feature_maps=FEATURE_MAPS)
    pretrained = source.state_dict is not None
    if not pretrained:
        _logger.warning(
            "%s has no pretrained weights (name a tag, e.g. %s.<tag>, or local-dir:PATH): training from scratch, "
            "with batch norms training and no frozen stages",
            model_name,
            model_name,
        )
    model = build_mask2former(source, data.id2label, **model_config)
    freeze_backbone_defaults(model, frozen_stages if pretrained else -1, norm_eval=pretrained)
    processor = image_processor(image_size, source.mean, source.std)
    metrics = InstanceMetrics(processor, data.id2label, data.test)
    return TrainingSetup(
        model=model,
        train_data=InstanceInputs(data.train, processor, flip_seed=seed),
        test_data=InstanceInputs(data.test, processor, with_index=True),
        collate=collate,
        compute_metrics=metrics,
        report=partial(
            _report,
            model_name=model_name,
            dataset=dataset,
            processor=processor,
            metrics=metrics,
            image_size=image_size,
            train_images=len(data.train),
            freezing=(
                f"batch-norm statistics frozen, stem and {frozen_stages} stage(s) frozen except FDConv's attentions"
                if pretrained
                else "from scratch: batch norms training, no frozen stages"
            ),
        ),
        check_split="test",  # the train transform draws random flips
        trainer_class=instance_trainer(backbone_lr_scale),
        trainer_kwargs=dict(processing_class=processor),
        argument_overrides=dict(
            batch_eval_metrics=True,
            eval_do_concat_batches=False,
            max_grad_norm=0.01,  # Mask2Former's gradient clipping
            # No metric_for_best_model: with save_total_limit=1 Trainer would then keep the best checkpoint
            # instead of the last, and a rerun would resume from an earlier epoch.
        ),
    )


_CARD = """---
{{ card_data }}
---

# {{ model_name }}

Instance segmentation with an FDConv backbone (Frequency Dynamic Convolution, [CVPR 2025](https://arxiv.org/abs/2503.18783)):
Mask2Former on `{{ base_model }}`, fine-tuned with fdconv-zoo's `fdconv-zoo finetune-instance-segmentation` on
{{ dataset }} ({{ train_images }} training images; HF Trainer, {{ epochs }} epochs, batch size {{ batch_size }},
learning rate {{ lr }} and {{ backbone_lr }} for the backbone, {{ image_size }} px inputs, {{ freezing }}).

COCO metrics on {{ test_examples }} held-out images (torchmetrics, faster-coco-eval; segm: masks, bbox: boxes
around the masks; -1: no such objects):

| metric | value |
|---|---|
{{ summary }}
| eval loss | {{ eval_loss }} |
| parameters | {{ parameters }} |

| class | mask AP |
|---|---|
{{ per_class }}

```python
import fdconv_zoo  # registers the FDConv backbones, so the model's backbone can be built
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

model = AutoModelForUniversalSegmentation.from_pretrained("<this folder or repo>")
processor = AutoImageProcessor.from_pretrained("<this folder or repo>")
outputs = model(**processor(images=image, return_tensors="pt"))
instances = processor.post_process_instance_segmentation(outputs, threshold=0.5, target_sizes=[image.size[::-1]])
```
"""


def _report(
    run: TrainedRun,
    *,
    model_name: str,
    dataset: str,
    processor: Any,
    metrics: InstanceMetrics,
    image_size: int,
    train_images: int,
    freezing: str,
) -> Report[InstanceSegmentationFinetuneResult]:
    keys = [f"{kind}_{key}" for kind in ("segm", "bbox") for key in SUMMARY_KEYS]
    scores = {key: run.metrics[f"eval_{key}"] for key in keys}
    per_class = dict(metrics.per_class)
    result = InstanceSegmentationFinetuneResult(
        model_name,
        scores,
        run.metrics["eval_loss"],
        run.parameters,
        run.train_seconds,
        run.saved_to,
        run.setup.model,
        per_class,
    )
    dataset_label = Path(dataset).name if Path(dataset).is_dir() else dataset
    title = f"Mask2Former on {model_name} fine-tuned on {dataset_label}"
    return coco_report(
        run,
        result,
        title=title,
        model_name=model_name,
        dataset_label=dataset_label,
        scores=scores,
        per_class=per_class,
        per_class_name="mask AP",
        per_class_key="per_class_segm_map",
        processor=processor,
        image_size=image_size,
        train_images=train_images,
        freezing=freezing,
        card_data=_card_data(model_name, dataset, dataset_label, title, scores),
        card_template=_CARD,
    )


def _card_data(model_name: str, dataset: str, dataset_label: str, title: str, scores: Mapping[str, float]) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    local = Path(dataset).is_dir()
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["fdconv", "instance-segmentation", "mask2former", "fdconv-zoo"],
        datasets=None if local else [dataset],
        base_model=model_name.removeprefix("hf-hub:") if model_name.startswith("hf-hub:") else None,
        metrics=["map"],
        model_name=title,
        eval_results=[
            EvalResult(
                task_type="image-segmentation",
                dataset_type=dataset_label,
                dataset_name=dataset_label,
                metric_type="map",
                metric_name="COCO mask AP",
                metric_value=round(scores["segm_map"], 4),
            )
        ],
    )
