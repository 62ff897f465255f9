"""Fine-tune a transformers detector (RT-DETRv2 by default) on an FDConv timm backbone with Hugging Face Trainer.

The flow is the one every fine-tune shares (:mod:`..trainer_flow`); this module supplies the COCO data,
the detector with its checked backbone weights, augmentation, COCO mAP, and the saved folder: a transformers
model with its image processor, ``metrics.json`` and a card, which ``AutoModelForObjectDetection`` and
``AutoImageProcessor`` load after ``import fdconv_zoo``.
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
from ..trainer_flow import Report, TrainedRun, TrainingPlan, TrainingSetup, run_finetune
from .extra import require_detection_extra
from .inputs import DetectionInputs, collate, image_processor, round_image_size, train_augmentation
from .metrics import SUMMARY_KEYS, DetectionMetrics
from .model import build_detector, freeze_backbone_defaults, load_backbone_source
from .trainer import detection_trainer

__all__ = ["DetectionFinetuneResult", "finetune_detection"]

_logger = logging.getLogger(__name__)


@dataclass
class DetectionFinetuneResult:
    model_name: str
    detector: str
    metrics: dict[str, float]  # COCO summary (map, map_50, ..., mar_100); -1: no such objects
    eval_loss: float
    parameters: int
    train_seconds: float
    saved_to: Path
    model: torch.nn.Module  # the trained transformers detector
    per_class_map: dict[str, float] = field(default_factory=dict)


def finetune_detection(
    model_name: str,
    dataset: str | Path,
    output_dir: str | Path,
    *,
    detector: str = "rt-detr-v2",
    epochs: float = 12,
    batch_size: int = 8,
    learning_rate: float = 1e-4,
    backbone_lr_scale: float = 0.1,
    image_size: int = 640,
    frozen_stages: int = 1,
    id2label: Mapping[int, str] | None = None,
    detector_config: Mapping[str, Any] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    skip_bad_images: bool = False,
) -> DetectionFinetuneResult:
    """Fine-tune ``detector`` on the timm backbone ``model_name`` with ``dataset``; save to ``output_dir/model``.

    ``model_name``: a timm architecture (random init), ``arch.tag``, ``local-dir:PATH``, ``hf-hub:ID``, or a
    transformers FDConv backbone folder (Swin, ResNet, ConvNeXt); its
    weights are loaded into the detector strictly and checked. ``dataset``: a COCO folder (``train/`` +
    ``val/``) or a ``datasets`` dataset in the cppe-5 layout (see :func:`~fdconv_zoo.finetune.coco_data.load_coco_dataset`).
    The stem and the first ``frozen_stages`` stages are frozen except FDConv's attentions; batch norms are
    frozen; the backbone learns at ``backbone_lr_scale`` times ``learning_rate``. ``image_size`` is rounded to
    a multiple of 32. A backbone without pretrained weights trains from scratch: nothing frozen, batch norms
    training. ``detector_config`` overrides config fields (e.g. ``num_queries``). Checkpoints go to
    ``output_dir/checkpoints`` each epoch and a re-run resumes; ``output_dir/model`` is only replaced with
    ``overwrite=True``. A missing or unreadable image stops the run before training, naming its file, or with
    ``skip_bad_images`` is left out with its objects (logged). Under ``torchrun`` every process trains, only the
    main one writes.
    """
    require_detection_extra()
    check_backbone_options(image_size, backbone_lr_scale, frozen_stages)
    plan = TrainingPlan(Path(output_dir), epochs, batch_size, learning_rate, seed, overwrite)
    prepare = partial(
        _prepare,
        model_name,
        str(dataset),
        detector=detector,
        backbone_lr_scale=backbone_lr_scale,
        image_size=round_image_size(image_size),
        frozen_stages=frozen_stages,
        id2label=id2label,
        detector_config=dict(detector_config or {}),
        seed=seed,
        skip_bad_images=skip_bad_images,
    )
    return run_finetune(plan, prepare)


def _prepare(
    model_name: str,
    dataset: str,
    *,
    detector: str,
    backbone_lr_scale: float,
    image_size: int,
    frozen_stages: int,
    id2label: Mapping[int, str] | None,
    detector_config: dict[str, Any],
    seed: int,
    skip_bad_images: bool,
) -> TrainingSetup[DetectionFinetuneResult]:
    data = load_coco_dataset(dataset, id2label=id2label, skip_bad_images=skip_bad_images)
    source = load_backbone_source(model_name)
    pretrained = source.state_dict is not None
    if not pretrained:  # mmdet's from-scratch setting: nothing frozen, batch norms train
        _logger.warning(
            "%s has no pretrained weights (name a tag, e.g. %s.<tag>, or local-dir:PATH): training from scratch, "
            "with trainable batch norms and no frozen stages",
            model_name,
            model_name,
        )
    model = build_detector(detector, source, data.id2label, freeze_batch_norms=pretrained, **detector_config)
    freeze_backbone_defaults(model, frozen_stages if pretrained else -1, norm_eval=pretrained)
    processor = image_processor(detector, image_size, source.mean, source.std)
    metrics = DetectionMetrics(processor, data.id2label, data.test)
    return TrainingSetup(
        model=model,
        train_data=DetectionInputs(data.train, processor, train_augmentation(seed)),
        test_data=DetectionInputs(data.test, processor, with_index=True),
        collate=collate,
        compute_metrics=metrics,
        report=partial(
            _report,
            model_name=model_name,
            dataset=dataset,
            detector=detector,
            processor=processor,
            metrics=metrics,
            image_size=image_size,
            train_images=len(data.train),
            freezing=(
                f"frozen batch norms, stem and {frozen_stages} stage(s) frozen except FDConv's attentions"
                if pretrained
                else "from scratch: trainable batch norms, no frozen stages"
            ),
        ),
        check_split="test",  # the train transform draws random augmentations
        trainer_class=detection_trainer(backbone_lr_scale),
        trainer_kwargs=dict(processing_class=processor),
        argument_overrides=dict(
            batch_eval_metrics=True,
            eval_do_concat_batches=False,
            weight_decay=1e-4,  # RT-DETR's
            max_grad_norm=0.1,  # RT-DETR's gradient clipping
            # No metric_for_best_model: with save_total_limit=1 Trainer would then keep the best checkpoint
            # instead of the last, and a rerun would resume from an earlier epoch.
        ),
    )


_CARD = """---
{{ card_data }}
---

# {{ model_name }}

Object detection with an FDConv backbone (Frequency Dynamic Convolution, [CVPR 2025](https://arxiv.org/abs/2503.18783)):
{{ detector }} on `{{ base_model }}`, fine-tuned with fdconv-zoo's `fdconv-zoo finetune-detection` on {{ dataset }}
({{ train_images }} training images; HF Trainer, {{ epochs }} epochs, batch size {{ batch_size }}, learning rate
{{ lr }} and {{ backbone_lr }} for the backbone, {{ image_size }} px inputs, {{ freezing }}).

COCO metrics on {{ test_examples }} held-out images (torchmetrics, faster-coco-eval; -1: no such objects):

| metric | value |
|---|---|
{{ summary }}
| eval loss | {{ eval_loss }} |
| parameters | {{ parameters }} |

| class | AP |
|---|---|
{{ per_class }}

```python
import fdconv_zoo  # registers the FDConv backbones with timm, so the detector's backbone can be built
from transformers import AutoImageProcessor, AutoModelForObjectDetection

model = AutoModelForObjectDetection.from_pretrained("<this folder or repo>")
processor = AutoImageProcessor.from_pretrained("<this folder or repo>")
outputs = model(**processor(images=image, return_tensors="pt"))
detections = processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=[image.size[::-1]])
```
"""


def _report(
    run: TrainedRun,
    *,
    model_name: str,
    dataset: str,
    detector: str,
    processor: Any,
    metrics: DetectionMetrics,
    image_size: int,
    train_images: int,
    freezing: str,
) -> Report[DetectionFinetuneResult]:
    scores = {key: run.metrics[f"eval_{key}"] for key in SUMMARY_KEYS}
    per_class = dict(metrics.per_class)
    result = DetectionFinetuneResult(
        model_name,
        detector,
        scores,
        run.metrics["eval_loss"],
        run.parameters,
        run.train_seconds,
        run.saved_to,
        run.setup.model,
        per_class,
    )
    dataset_label = Path(dataset).name if Path(dataset).is_dir() else dataset
    title = f"{detector} on {model_name} fine-tuned on {dataset_label}"
    return coco_report(
        run,
        result,
        title=title,
        model_name=model_name,
        dataset_label=dataset_label,
        scores=scores,
        per_class=per_class,
        per_class_name="AP",
        per_class_key="per_class_map",
        processor=processor,
        image_size=image_size,
        train_images=train_images,
        freezing=freezing,
        card_data=_card_data(model_name, dataset, dataset_label, title, scores),
        card_template=_CARD,
        detector=detector,
    )


def _card_data(model_name: str, dataset: str, dataset_label: str, title: str, scores: Mapping[str, float]) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    local = Path(dataset).is_dir()
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="object-detection",
        tags=["fdconv", "object-detection", "fdconv-zoo"],
        datasets=None if local else [dataset],
        base_model=model_name.removeprefix("hf-hub:") if model_name.startswith("hf-hub:") else None,
        metrics=["map"],
        model_name=title,
        eval_results=[
            EvalResult(
                task_type="object-detection",
                dataset_type=dataset_label,
                dataset_name=dataset_label,
                metric_type="map",
                metric_name="COCO mAP",
                metric_value=round(scores["map"], 4),
            )
        ],
    )
