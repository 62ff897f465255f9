"""Fine-tune a timm classifier (FDConv or plain) with Hugging Face Trainer on a ``datasets`` dataset.

The timm model is wrapped in transformers' ``TimmWrapperForImageClassification``, so Trainer sees an
ordinary transformers model (``labels`` -> ``loss``, checkpoints, resumption); images are prepared with
timm's data config for that model. The result is saved as a timm-format folder (``model.safetensors`` +
``config.json``) that ``timm.create_model('local-dir:...')`` and ``AutoModelForImageClassification`` load,
with a model card.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from .timm_models import save_fdconv_for_hf

__all__ = ["FinetuneResult", "finetune_classification", "load_image_classification_dataset"]

_logger = logging.getLogger(__name__)

BUILTIN_DATASETS = ("digits",)


@dataclass
class FinetuneResult:
    model_name: str
    accuracy: float
    eval_loss: float
    parameters: int
    train_seconds: float
    saved_to: Path
    model: torch.nn.Module  # the trained TimmWrapperForImageClassification


def _digits() -> Any:
    """scikit-learn's 1,797 8x8 handwritten digits (shipped inside the package: works offline)."""
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [PILImage.fromarray((img * 16).clip(0, 255).astype(np.uint8), mode="L") for img in digits.images]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    return Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)


def load_image_classification_dataset(name_or_path: str, *, test_size: float = 0.2, seed: int = 0) -> Any:
    """A ``DatasetDict`` with ``train`` and ``test`` splits of ``image``/``label`` examples.

    ``name_or_path``: ``digits`` (built in, offline), a local folder with one sub-folder per class
    (``imagefolder``), or a dataset name on the Hub. Without a test split, a stratified ``test_size``
    share of ``train`` becomes one.
    """
    from datasets import ClassLabel, DatasetDict, load_dataset

    if name_or_path == "digits":
        data = DatasetDict(train=_digits())
    elif Path(name_or_path).is_dir():
        data = load_dataset("imagefolder", data_dir=name_or_path)
    else:
        data = load_dataset(name_or_path)
    if "train" not in data:
        raise ValueError(f"dataset {name_or_path!r} has no 'train' split (splits: {list(data)})")
    columns = set(data["train"].column_names)
    if not {"image", "label"} <= columns:
        raise ValueError(
            f"dataset {name_or_path!r} needs 'image' and 'label' columns, found {sorted(columns)}; "
            "rename them with dataset.rename_column(old, new)"
        )
    if not isinstance(data["train"].features["label"], ClassLabel):
        raise ValueError(f"the 'label' column of {name_or_path!r} must be a ClassLabel; convert it with dataset.class_encode_column('label')")
    for split in ("test", "validation"):
        if split in data:
            return DatasetDict(train=data["train"], test=data[split])
    return data["train"].train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")


def _build_classifier(model_name: str, num_labels: int, model_kwargs: Mapping[str, Any]):
    """TimmWrapper around ``model_name`` (an architecture, or ``arch.tag`` to start from pretrained weights)."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    import fdconv_zoo  # noqa: F401  (registers the FDConv architectures)

    arch, _, tag = model_name.partition(".")
    if arch not in timm.list_models():
        raise ValueError(f"unknown timm model {arch!r}; FDConv models: {', '.join(timm.list_models('*fdconv*'))}")
    config = TimmWrapperConfig(architecture=arch, num_labels=num_labels, model_args=dict(model_kwargs))
    model = TimmWrapperForImageClassification(config)
    if tag:  # pretrained weights, converted and with a new head by timm's own loader
        model.timm_model = timm.create_model(model_name, pretrained=True, num_classes=num_labels, **model_kwargs)
    return model


def _image_transforms(timm_model: torch.nn.Module, image_size: int | None):
    config = timm.data.resolve_data_config(model=timm_model)
    if image_size is not None:
        config["input_size"] = (config["input_size"][0], image_size, image_size)
        config["crop_pct"] = 1.0
    train = timm.data.create_transform(**config, is_training=True, hflip=0.0)  # digits and text must not be mirrored
    test = timm.data.create_transform(**config, is_training=False)
    channels = config["input_size"][0]

    def apply(transform):
        def batch_transform(batch: dict[str, list]) -> dict[str, Any]:
            mode = "RGB" if channels == 3 else "L"
            pixels = [transform(img.convert(mode)) for img in batch["image"]]
            return {"pixel_values": pixels, "labels": batch["label"]}

        return batch_transform

    return apply(train), apply(test)


def _collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples]),
    }


def _accuracy(prediction) -> dict[str, float]:
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
) -> FinetuneResult:
    """Fine-tune ``model_name`` on ``dataset`` and save it to ``output_dir/model``.

    Checkpoints go to ``output_dir/checkpoints`` after every epoch; a run that finds one there (an
    interrupted fine-tune) resumes from it. Under ``torchrun``/``accelerate launch`` the same call trains
    with DDP (gloo on CPU, NCCL on GPUs); only the main process writes the model.
    """
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(seed)
    output_dir = Path(output_dir)
    data = load_image_classification_dataset(dataset, seed=seed)
    labels = data["train"].features["label"].names
    model = _build_classifier(model_name, len(labels), model_kwargs or {})
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    train_transform, test_transform = _image_transforms(model.timm_model, image_size)
    checkpoints = output_dir / "checkpoints"
    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=0.05,
        lr_scheduler_type="cosine",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        logging_strategy="epoch",
        remove_unused_columns=False,
        report_to=[],
        seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without a GPU, Trainer/accelerate only sets up multi-process (torchrun, accelerate launch) training
        # when told the run is on the CPU; gloo is the CPU backend.
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,  # every parameter, FDConv attentions included, must get a gradient
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"].with_transform(train_transform),
        eval_dataset=data["test"].with_transform(test_transform),
        data_collator=_collate,
        compute_metrics=_accuracy,
    )
    resume = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    if resume:
        _logger.info("resuming from the last checkpoint in %s", checkpoints)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate()

    saved = output_dir / "model"
    parameters = sum(p.numel() for p in model.parameters())
    if not trainer.is_world_process_zero():  # distributed runs: one writer
        return FinetuneResult(model_name, metrics["eval_accuracy"], metrics["eval_loss"], parameters, seconds, saved, model)
    save_fdconv_for_hf(model.timm_model, saved)
    size = model.timm_model.pretrained_cfg.get("input_size", (3, image_size))[-1] if image_size is None else image_size
    card = ModelCard.from_template(
        ModelCardData(library_name="timm", tags=["fdconv", "image-classification", "fdconv-zoo"], datasets=[dataset] if dataset != "digits" else None),
        template_str=_CARD,
        model_name=model_name, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=learning_rate, image_size=size,
        accuracy=f"{metrics['eval_accuracy']:.4f}", eval_loss=f"{metrics['eval_loss']:.4f}", parameters=f"{parameters:,}",
        test_examples=len(data["test"]),
    )
    card.save(saved / "README.md")
    return FinetuneResult(model_name, metrics["eval_accuracy"], metrics["eval_loss"], parameters, seconds, saved, model)

