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
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import timm
import torch

from .timm_models import save_fdconv_for_hf

if TYPE_CHECKING:
    from PIL.Image import Image as PILImageType
    from transformers import TrainingArguments

__all__ = [
    "FinetuneInputError",
    "FinetuneResult",
    "finetune_classification",
    "load_image_classification_dataset",
    "log_metrics_table",
    "to_model_image",
]

_logger = logging.getLogger(__name__)

BUILTIN_DATASETS = ("digits",)


class FinetuneInputError(ValueError):
    """Bad input to a fine-tune (dataset, labels, images, model name); the message names the fix."""


def to_model_image(image: Any, channels: int) -> PILImageType:
    """``image`` as a PIL image with the model's channels (``channels`` 3: RGB, 1: L).

    PIL images of any mode (L, LA, P, RGBA, CMYK, ...) are converted with PIL, as timm's and transformers'
    pipelines do (the alpha channel is dropped, grayscale is repeated). Arrays and tensors (H, W), (H, W, C)
    or (C, H, W) with C in 1, 3, 4 are read the same way (4: RGBA); any other shape, and values outside
    0-255 (integers) or 0-1 (floats), are refused with the fix, because there is no safe conversion.
    """
    from PIL import Image as PILImage

    if channels not in (1, 3):
        raise FinetuneInputError(f"the model takes {channels}-channel images; fine-tuning prepares 1-channel (L) or 3-channel (RGB) images only")
    if not isinstance(image, PILImage.Image):
        array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
        if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # channels first (torch layout)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise FinetuneInputError(
                f"an image array of shape {array.shape} has no image layout with 1 (gray), 3 (RGB) or 4 (RGBA) channels, "
                f"and the model takes {channels}-channel images: convert the dataset's images to RGB (e.g. "
                "dataset.cast_column('image', datasets.Image()) with PIL images) or select 3 channels"
            )
        array = _as_uint8(array)
        image = PILImage.fromarray(array)  # (H, W): L, (H, W, 3): RGB, (H, W, 4): RGBA
    return image.convert("RGB" if channels == 3 else "L")


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer) and array.size and 0 <= array.min() and array.max() <= 255:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and array.size and 0.0 <= array.min() and array.max() <= 1.0:
        return np.round(array * 255).astype(np.uint8)
    raise FinetuneInputError(
        f"image array of dtype {array.dtype} with values {array.min()}..{array.max()}: expected 8-bit values (0-255) "
        "or floats in 0-1; rescale the images to 8 bits first"
    )


def log_metrics_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    """Log ``rows`` of (name, value) as a two-column table (one log record, so it stays together)."""
    width = max(len("metric"), *(len(name) for name, _ in rows))
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    _logger.info("\n".join(lines))


def _refuse_to_overwrite(output_dir: Path, overwrite: bool) -> Path:
    """``output_dir/model``; refused before training when it holds a finished model and ``overwrite`` is off."""
    saved = output_dir / "model"
    if saved.exists() and not overwrite:
        raise FileExistsError(
            f"{saved} already holds a fine-tuned model; pass --overwrite (overwrite=True) to replace it, "
            "or choose another --output-dir"
        )
    return saved


def _save_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """``write(folder)`` into a temporary sibling folder, then swap it in: ``target`` is never half written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def _has_checkpoint(checkpoints: Path) -> bool:
    """Whether a previous (interrupted) run left a checkpoint to resume from."""
    resume = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    if resume:
        _logger.info("resuming from the last checkpoint in %s (delete that folder to start afresh)", checkpoints)
    return resume


def _training_arguments(checkpoints: Path, *, epochs: float, batch_size: int, learning_rate: float, seed: int, **overrides: Any) -> TrainingArguments:
    """The TrainingArguments both fine-tune commands share: per-epoch evaluation and checkpoints, DDP-ready."""
    from transformers import TrainingArguments

    args = dict(
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
        disable_tqdm=False,  # progress bars, whatever transformers' log level
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without a GPU, Trainer/accelerate only sets up multi-process (torchrun, accelerate launch) training
        # when told the run is on the CPU; gloo is the CPU backend.
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,  # every parameter, FDConv attentions included, must get a gradient
    )
    return TrainingArguments(**{**args, **overrides})


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

    ``name_or_path``: ``digits`` (built in, offline), a folder written by ``save_to_disk``, a local folder
    with one sub-folder per class (``imagefolder``), or a dataset name on the Hub. The evaluation split is
    ``test``, else ``validation`` (an all-unlabelled split, labels -1, is skipped), else a stratified
    ``test_size`` share of ``train``. Labels outside the classes are refused here, before any training.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

    if name_or_path == "digits":
        data = DatasetDict(train=_digits())
    elif _is_saved_dataset(Path(name_or_path)):
        data = load_from_disk(name_or_path)
    elif Path(name_or_path).is_dir():
        data = load_dataset("imagefolder", data_dir=name_or_path)
    else:
        data = _load_hub_dataset(name_or_path, "'digits', a folder written by dataset.save_to_disk, a folder with one sub-folder per class")
    if isinstance(data, Dataset):
        data = DatasetDict(train=data)
    if "train" not in data:
        raise FinetuneInputError(f"dataset {name_or_path!r} has no 'train' split (splits: {list(data)})")
    columns = set(data["train"].column_names)
    if not {"image", "label"} <= columns:
        raise FinetuneInputError(
            f"dataset {name_or_path!r} needs 'image' and 'label' columns, found {sorted(columns)}; "
            "rename them with dataset.rename_column(old, new)"
        )
    if not isinstance(data["train"].features["label"], ClassLabel):
        raise FinetuneInputError(f"the 'label' column of {name_or_path!r} must be a ClassLabel; convert it with dataset.class_encode_column('label')")
    names = data["train"].features["label"].names
    _check_class_labels(data["train"], "train", names, name_or_path)
    for split in ("test", "validation"):
        if split not in data:
            continue
        if (np.asarray(data[split]["label"]) == -1).all():  # Hub test splits are often unlabelled
            _logger.info("the %r split of %s is unlabelled (all labels -1): not used for evaluation", split, name_or_path)
            continue
        _check_class_labels(data[split], split, names, name_or_path)
        return DatasetDict(train=data["train"], test=data[split])
    return data["train"].train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")


def _is_saved_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_hub_dataset(name: str, local_forms: str) -> Any:
    """``load_dataset(name)``, with a message naming what ``--dataset`` takes when there is no such dataset."""
    from datasets import load_dataset

    try:
        return load_dataset(name)
    except (FileNotFoundError, ConnectionError) as error:  # DatasetNotFoundError is a FileNotFoundError
        raise FinetuneInputError(
            f"cannot load dataset {name!r} ({error}); --dataset takes {local_forms}, or a Hub dataset name "
            "(offline: one already in the datasets cache)"
        ) from None


def _check_class_labels(split: Any, split_name: str, names: Sequence[str], dataset: str) -> None:
    """Refuse labels outside ``0..len(names)-1`` before training (``ClassLabel`` lets -1, "no label", through)."""
    labels = np.asarray(split["label"])
    bad = (labels < 0) | (labels >= len(names))
    if bad.any():
        values = np.unique(labels[bad])
        raise FinetuneInputError(
            f"the {split_name!r} split of {dataset!r} has {int(bad.sum())} of {len(labels)} labels outside 0..{len(names) - 1} "
            f"(its {len(names)} classes): {values[:10].tolist()}; -1 marks unlabelled examples: drop them with "
            "dataset.filter(lambda e: 0 <= e['label'] < num_classes), or give the 'label' ClassLabel every class name"
        )


def _build_classifier(model_name: str, num_labels: int, model_kwargs: Mapping[str, Any]):
    """TimmWrapper around ``model_name`` (an architecture, or ``arch.tag`` to start from pretrained weights)."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    import fdconv_zoo  # noqa: F401  (registers the FDConv architectures)

    arch, _, tag = model_name.partition(".")
    if arch not in timm.list_models():
        raise FinetuneInputError(f"unknown timm model {arch!r}; FDConv models: {', '.join(timm.list_models('*fdconv*'))}")
    config = TimmWrapperConfig(architecture=arch, num_labels=num_labels, model_args=dict(model_kwargs))
    model = TimmWrapperForImageClassification(config)
    if tag:  # pretrained weights, converted and with a new head by timm's own loader
        if model_name not in timm.list_pretrained(f"{arch}.*"):
            tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
            raise FinetuneInputError(f"unknown pretrained tag {model_name!r}; pretrained tags of {arch}: {tags} (or {arch} alone: random init)")
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
            pixels = [transform(to_model_image(img, channels)) for img in batch["image"]]
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
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune ``model_name`` on ``dataset`` and save it to ``output_dir/model``.

    Checkpoints go to ``output_dir/checkpoints`` after every epoch; a run that finds one there (an
    interrupted fine-tune) resumes from it. An existing ``output_dir/model`` is only replaced with
    ``overwrite=True`` (checked before training). Under ``torchrun``/``accelerate launch`` the same call
    trains with DDP (gloo on CPU, NCCL on GPUs); only the main process writes the model.
    """
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import Trainer, set_seed

    set_seed(seed)
    output_dir = Path(output_dir)
    saved = _refuse_to_overwrite(output_dir, overwrite)
    data = load_image_classification_dataset(dataset, seed=seed)
    labels = data["train"].features["label"].names
    model = _build_classifier(model_name, len(labels), model_kwargs or {})
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    train_transform, test_transform = _image_transforms(model.timm_model, image_size)
    train_data, test_data = data["train"].with_transform(train_transform), data["test"].with_transform(test_transform)
    _collate([train_data[0]])  # the first example goes through the whole pipeline before any training
    checkpoints = output_dir / "checkpoints"
    args = _training_arguments(checkpoints, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=test_data,
        data_collator=_collate,
        compute_metrics=_accuracy,
    )
    resume = _has_checkpoint(checkpoints)
    start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate()

    parameters = sum(p.numel() for p in model.parameters())
    result = FinetuneResult(model_name, metrics["eval_accuracy"], metrics["eval_loss"], parameters, seconds, saved, model)
    if not trainer.is_world_process_zero():  # distributed runs: one writer
        return result
    size = model.timm_model.pretrained_cfg.get("input_size", (3, image_size))[-1] if image_size is None else image_size
    card = ModelCard.from_template(
        ModelCardData(library_name="timm", tags=["fdconv", "image-classification", "fdconv-zoo"], datasets=[dataset] if dataset != "digits" else None),
        template_str=_CARD,
        model_name=model_name, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=learning_rate, image_size=size,
        accuracy=f"{metrics['eval_accuracy']:.4f}", eval_loss=f"{metrics['eval_loss']:.4f}", parameters=f"{parameters:,}",
        test_examples=len(data["test"]),
    )

    def write(folder: Path) -> None:
        save_fdconv_for_hf(model.timm_model, folder)
        card.save(folder / "README.md")

    _save_atomically(saved, write)
    log_metrics_table(
        f"{model_name} fine-tuned on {dataset} ({len(data['test'])} held-out images):",
        [
            ("accuracy", f"{metrics['eval_accuracy']:.4f}"),
            ("eval loss", f"{metrics['eval_loss']:.4f}"),
            ("train loss", f"{train_output.training_loss:.4f}"),
            ("epochs", f"{epochs:g}"),
            ("train seconds", f"{seconds:.0f}"),
            ("parameters", f"{parameters:,}"),
            ("saved to", str(saved)),
        ],
    )
    return result
