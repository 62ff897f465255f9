"""Fine-tune a timm classifier (FDConv or plain) with Hugging Face Trainer on a ``datasets`` dataset.

The timm model is wrapped in transformers' ``TimmWrapperForImageClassification``, so Trainer sees an
ordinary transformers model (``labels`` -> ``loss``, checkpoints, resumption); images are prepared with
timm's data config for that model. The result is saved as a timm-format folder (``model.safetensors`` +
``config.json``) that ``timm.create_model('local-dir:...')`` and ``AutoModelForImageClassification`` load,
with a model card.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from ..timm_models import save_fdconv_for_hf
from .classification_data import load_image_classification_dataset
from .errors import FinetuneInputError
from .images import to_model_image
from .trainer_flow import Report, TrainedRun, TrainingPlan, TrainingSetup, run_finetune

__all__ = ["FinetuneResult", "finetune_classification"]


@dataclass
class FinetuneResult:
    model_name: str
    accuracy: float
    eval_loss: float
    parameters: int
    train_seconds: float
    saved_to: Path
    model: torch.nn.Module  # the trained TimmWrapperForImageClassification


def finetune_classification(
    model_name: str,
    dataset: str,
    output_dir: str | Path,
    *,
    epochs: float = 3,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    image_size: int | None = None,
    seed: int = 0,
    model_kwargs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    skip_bad_images: bool = False,
) -> FinetuneResult:
    """Fine-tune ``model_name`` on ``dataset`` and save it to ``output_dir/model``.

    Checkpoints go to ``output_dir/checkpoints`` after every epoch; a run that finds one there (an
    interrupted fine-tune) resumes from it. An existing ``output_dir/model`` is only replaced with
    ``overwrite=True`` (checked before training). Every image is decoded before training: one that cannot be
    read stops the run, naming its file, or with ``skip_bad_images`` is left out (logged). Under ``torchrun``/``accelerate launch`` the same call
    trains with DDP (gloo on CPU, NCCL on GPUs); only the main process writes the model.
    """
    plan = TrainingPlan(Path(output_dir), epochs, batch_size, learning_rate, seed, overwrite)
    prepare = partial(_prepare, model_name, dataset, image_size, model_kwargs or {}, seed, skip_bad_images)
    return run_finetune(plan, prepare)


def _prepare(
    model_name: str,
    dataset: str,
    image_size: int | None,
    model_kwargs: Mapping[str, Any],
    seed: int,
    skip_bad_images: bool,
) -> TrainingSetup[FinetuneResult]:
    """The dataset, the wrapped timm model with a head for its classes, and timm's transforms for that model."""
    _check_model_name(model_name)  # before the dataset: a typo costs nothing
    data = load_image_classification_dataset(dataset, seed=seed, skip_bad_images=skip_bad_images)
    labels = data["train"].features["label"].names
    model = _build_classifier(model_name, len(labels), model_kwargs)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    train_transform, test_transform = _image_transforms(model.timm_model, image_size)
    return TrainingSetup(
        model=model,
        train_data=data["train"].with_transform(train_transform),
        test_data=data["test"].with_transform(test_transform),
        collate=_collate,
        compute_metrics=_accuracy,
        report=partial(_report, model_name=model_name, dataset=dataset, image_size=image_size),
    )


def _check_model_name(model_name: str) -> None:
    """Refuse an architecture timm does not have, or a pretrained tag it has not, naming the ones it has."""
    import fdconv_zoo  # noqa: F401  (registers the FDConv architectures)

    arch, _, tag = model_name.partition(".")
    if arch not in timm.list_models():
        raise FinetuneInputError(
            f"unknown timm model {arch!r}; FDConv models: {', '.join(timm.list_models('*fdconv*'))}"
        )
    if tag and model_name not in timm.list_pretrained(f"{arch}.*"):
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
        raise FinetuneInputError(
            f"unknown pretrained tag {model_name!r}; pretrained tags of {arch}: {tags} (or {arch} alone: random init)"
        )


def _build_classifier(model_name: str, num_labels: int, model_kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """TimmWrapper around ``model_name`` (an architecture, or ``arch.tag`` to start from pretrained weights; both
    checked by ``_check_model_name``)."""
    from huggingface_hub.errors import EntryNotFoundError
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    arch, _, tag = model_name.partition(".")
    config = TimmWrapperConfig(architecture=arch, num_labels=num_labels, model_args=dict(model_kwargs))
    try:
        model = TimmWrapperForImageClassification(config)
    except TypeError as error:  # a model keyword the architecture does not take
        if not model_kwargs:
            raise
        raise FinetuneInputError(f"--model-arg {', '.join(model_kwargs)}: {error}") from error
    if tag:  # pretrained weights, converted and with a new head by timm's own loader
        try:
            model.timm_model = timm.create_model(model_name, pretrained=True, num_classes=num_labels, **model_kwargs)
        except (OSError, EntryNotFoundError) as error:  # not in the cache (offline), no such repo or file
            raise FinetuneInputError(
                f"cannot load the pretrained weights of {model_name!r}: {str(error).splitlines()[0]}; offline "
                f"(HF_HUB_OFFLINE=1) they must already be in the Hugging Face cache, or start from {arch} alone"
            ) from error
    return model


BatchTransform = Callable[[dict[str, list]], dict[str, Any]]


def _image_transforms(timm_model: torch.nn.Module, image_size: int | None) -> tuple[BatchTransform, BatchTransform]:
    """(train, test) batch transforms from timm's data config for ``timm_model``, optionally at ``image_size``."""
    config = timm.data.resolve_data_config(model=timm_model)
    if image_size is not None:
        config["input_size"] = (config["input_size"][0], image_size, image_size)
        config["crop_pct"] = 1.0
    train = timm.data.create_transform(**config, is_training=True, hflip=0.0)  # digits and text must not be mirrored
    test = timm.data.create_transform(**config, is_training=False)
    channels = config["input_size"][0]

    def apply(transform: Callable[[Any], torch.Tensor]) -> BatchTransform:
        def batch_transform(batch: dict[str, list]) -> dict[str, Any]:
            pixels = [transform(to_model_image(img, channels)) for img in batch["image"]]
            return {"pixel_values": pixels, "labels": batch["label"]}

        return batch_transform

    return apply(train), apply(test)


def _collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples]),
    }


def _accuracy(prediction: Any) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


_CARD = """---
{{ card_data }}
---

# {{ model_name }} fine-tuned on {{ dataset }}

Fine-tuned with [fdconv-zoo](https://arxiv.org/abs/2503.18783)'s `fdconv-zoo finetune-classification` (HF Trainer,
{{ epochs }} epochs, batch size {{ batch_size }}, learning rate {{ lr }}, {{ image_size }} px inputs).

| metric | value |
|---|---|
| accuracy ({{ test_examples }} held-out images) | {{ accuracy }} |
| eval loss | {{ eval_loss }} |
| parameters | {{ parameters }} |

```python
import fdconv_zoo, timm  # importing fdconv_zoo registers the FDConv architectures
model = timm.create_model("local-dir:<this folder>", pretrained=True)
```
"""


def _report(run: TrainedRun, *, model_name: str, dataset: str, image_size: int | None) -> Report[FinetuneResult]:
    """The result, a timm-format model folder with its card, and the accuracy rows of the metrics table."""
    from huggingface_hub import ModelCardData

    model, metrics, plan = run.setup.model, run.metrics, run.plan
    result = FinetuneResult(
        model_name,
        metrics["eval_accuracy"],
        metrics["eval_loss"],
        run.parameters,
        run.train_seconds,
        run.saved_to,
        model,
    )
    size = model.timm_model.pretrained_cfg.get("input_size", (3, image_size))[-1] if image_size is None else image_size
    card_fields = dict(
        model_name=model_name,
        dataset=dataset,
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        lr=plan.learning_rate,
        image_size=size,
        accuracy=f"{metrics['eval_accuracy']:.4f}",
        eval_loss=f"{metrics['eval_loss']:.4f}",
        parameters=f"{run.parameters:,}",
        test_examples=len(run.setup.test_data),
    )
    return Report(
        result=result,
        title=f"{model_name} fine-tuned on {dataset}",
        metric_rows=[
            ("accuracy", f"{metrics['eval_accuracy']:.4f}"),
            ("eval loss", f"{metrics['eval_loss']:.4f}"),
            ("train loss", f"{run.train_loss:.4f}"),
        ],
        card_data=ModelCardData(
            library_name="timm",
            tags=["fdconv", "image-classification", "fdconv-zoo"],
            datasets=[dataset] if dataset != "digits" else None,
        ),
        card_template=_CARD,
        card_fields=card_fields,
        save_model=partial(save_fdconv_for_hf, model.timm_model),
    )
