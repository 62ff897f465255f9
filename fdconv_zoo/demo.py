"""``fdconv-zoo demo``: the zoo's workflow end to end, offline, in a few CPU minutes.

Take a pretrained plain model (here a narrow ResNet-18 trained briefly on scikit-learn's digits, standing in
for ImageNet weights), convert it to FDConv exactly (the ``resnet18_fdconv`` timm model loading the plain
checkpoint), fine-tune the FDConv model and a copy of the plain one with the same budget, profile both, then
draw the FDConv pictures and export the FDConv model to ONNX (checked with onnxruntime).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import timm.data
import torch
import torch.nn as nn

__all__ = [
    "DEMO_MODEL_KWARGS",
    "ConversionCheck",
    "check_converted",
    "convert_plain_checkpoint",
    "held_out_digits",
    "run_demo",
]

_logger = logging.getLogger("fdconv_zoo")

DEMO_MODEL_KWARGS: dict[str, Any] = dict(layers=(1, 1, 1, 1), channels=(32, 64, 96, 128))  # a narrow ResNet-18
_IMAGE_SIZE = 32  # the 8x8 digits resized
_CONVERSION_TOLERANCE = 1e-4  # max relative logit difference that counts as "the same function" (float32)


@dataclass(frozen=True)
class ConversionCheck:
    """The plain and the converted model on the held-out images, before any fine-tuning."""

    images: int
    plain_accuracy: float
    fdconv_accuracy: float
    max_logit_difference: float
    max_abs_logit: float
    differing_predictions: int

    @property
    def max_rel_difference(self) -> float:
        return self.max_logit_difference / self.max_abs_logit


def held_out_digits(model: nn.Module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out digits (the split fine-tuning evaluates on), preprocessed as ``model`` was trained."""
    from .finetune import load_image_classification_dataset

    test = load_image_classification_dataset("digits", seed=seed)["test"]
    config = timm.data.resolve_data_config({"input_size": (3, _IMAGE_SIZE, _IMAGE_SIZE), "crop_pct": 1.0}, model=model)
    transform = timm.data.create_transform(**config)
    images = [transform(e["image"].convert("RGB")) for e in test]
    return torch.stack(images), torch.tensor(test["label"])


@torch.no_grad()
def check_converted(plain: nn.Module, fdconv: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> ConversionCheck:
    """Accuracy of both models and how far apart their logits are, in eval mode."""
    expected, actual = plain.eval()(images), fdconv.eval()(images)
    return ConversionCheck(
        images=len(labels),
        plain_accuracy=(expected.argmax(1) == labels).float().mean().item(),
        fdconv_accuracy=(actual.argmax(1) == labels).float().mean().item(),
        max_logit_difference=(actual - expected).abs().max().item(),
        max_abs_logit=expected.abs().max().item(),
        differing_predictions=int((actual.argmax(1) != expected.argmax(1)).sum()),
    )


def convert_plain_checkpoint(checkpoint: Path, num_classes: int) -> nn.Module:
    """The narrow ``resnet18_fdconv`` with the plain ``resnet18`` weights of ``checkpoint``, converted exactly by
    the FDConv model's own pretrained loader (as for ``timm.create_model('resnet50_fdconv.tv_in1k', pretrained=True)``)."""
    return timm.create_model(
        "resnet18_fdconv",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(checkpoint), num_classes=num_classes),
        num_classes=num_classes,
        **DEMO_MODEL_KWARGS,
    )


def _from_checkpoint(arch: str, checkpoint: Path, tag: str, num_classes: int) -> tuple[str, dict[str, Any]]:
    """``finetune_classification`` arguments that start ``arch`` from a local checkpoint: timm's pretrained
    loader with ``pretrained_cfg_overlay`` (for an FDConv architecture, its loader converts the plain weights)."""
    overlay = dict(file=str(checkpoint), num_classes=num_classes)  # same head size: timm keeps the classifier
    return f"{arch}.{tag}", dict(DEMO_MODEL_KWARGS, pretrained_cfg_overlay=overlay)


def run_demo(
    output_dir: str | Path,
    *,
    pretrain_epochs: float = 3,
    epochs: float = 2,
    seed: int = 0,
    latency_repeats: int = 20,
    export: bool = True,
) -> int:
    """Run the demo into a new timestamped folder of ``output_dir``; 0 when the conversion is exact (and the
    ONNX export matches PyTorch), else 1."""
    from .finetune import finetune_classification
    from .profiling import format_profile, profile_models

    run_dir = Path(output_dir) / time.strftime("%Y%m%d-%H%M%S")  # a new folder per run: never overwrites
    train = dict(batch_size=32, learning_rate=2e-3, image_size=_IMAGE_SIZE, seed=seed)
    _logger.info(
        "FDConv demo: pretrained plain ResNet -> exact FDConv conversion -> fine-tuning, on scikit-learn's 8x8 digits\n"
        "resized to 32x32 (1 block per stage, widths 32-128; HF Trainer, batch 32, CPU). Output: %s\n",
        run_dir,
    )
    _logger.info(
        "== 1. 'Pretrained' weights: resnet18 trained from scratch for %g epochs (a stand-in for ImageNet weights)",
        pretrain_epochs,
    )
    pretrained = finetune_classification(
        "resnet18",
        "digits",
        run_dir / "pretrained-resnet18",
        epochs=pretrain_epochs,
        model_kwargs=DEMO_MODEL_KWARGS,
        **train,
    )
    checkpoint = pretrained.saved_to / "model.safetensors"
    plain = pretrained.model.timm_model
    tag = plain.pretrained_cfg["tag"]  # the same preprocessing config for every model below
    num_classes = plain.num_classes

    _logger.info("\n== 2. Conversion: timm.create_model('resnet18_fdconv', pretrained=True) loading %s", checkpoint)
    converted = convert_plain_checkpoint(checkpoint, num_classes)
    images, labels = held_out_digits(plain, seed)
    check = check_converted(plain, converted, images, labels)
    for value, meaning in (
        (f"{check.plain_accuracy:.4f}", f"held-out accuracy of the plain model ({check.images} images)"),
        (f"{check.fdconv_accuracy:.4f}", "held-out accuracy of the converted FDConv model, before fine-tuning"),
        (f"{check.differing_predictions}", "held-out images on which the two models predict different classes"),
        (
            f"{check.max_logit_difference:.1e}",
            "largest |FDConv logit - plain logit| over all held-out images and classes",
        ),
        (f"{check.max_abs_logit:.1f}", "largest |plain logit|, for scale"),
    ):
        _logger.info("  %-8s %s", value, meaning)
    exact = check.max_rel_difference <= _CONVERSION_TOLERANCE

    _logger.info("\n== 3. Fine-tuning both from those weights, %g epochs each, same settings", epochs)
    results = {}
    for arch in ("resnet18_fdconv", "resnet18"):
        name, model_kwargs = _from_checkpoint(arch, checkpoint, tag, num_classes)
        results[arch] = finetune_classification(
            name, "digits", run_dir / arch, epochs=epochs, model_kwargs=model_kwargs, **train
        )
    fd, pl = results["resnet18_fdconv"], results["resnet18"]
    _logger.info("")
    for value, meaning in (
        (f"{check.plain_accuracy:.4f}", "held-out accuracy of both models before fine-tuning (from step 2)"),
        (f"{fd.accuracy:.4f}", "held-out accuracy of the FDConv model after fine-tuning"),
        (f"{pl.accuracy:.4f}", "held-out accuracy of the plain model after the same fine-tuning"),
        (f"{fd.train_seconds:.0f}", "seconds of FDConv fine-tuning"),
        (f"{pl.train_seconds:.0f}", "seconds of plain fine-tuning"),
    ):
        _logger.info("  %-8s %s", value, meaning)
    _logger.info(
        "  saved to %s and %s (timm.create_model('local-dir:<folder>', pretrained=True))", fd.saved_to, pl.saved_to
    )

    _logger.info("\n== 4. Cost of the fine-tuned models (fdconv-zoo profile)")
    fdconv_model, plain_model = fd.model.timm_model.eval(), pl.model.timm_model.eval()
    input_size = (3, _IMAGE_SIZE, _IMAGE_SIZE)
    profiles = profile_models(
        {"resnet18 (narrow)": plain_model, "resnet18_fdconv (narrow)": fdconv_model},
        input_size,
        timed=True,
        repeats=latency_repeats,
    )
    _logger.info(format_profile(*profiles, input_size, repeats=latency_repeats))

    _logger.info("\n== 5. Pictures and ONNX export of the fine-tuned FDConv model")
    figures = _demo_figures(fdconv_model, run_dir / "figures", seed)
    for path in figures:
        _logger.info("  figure: %s", path)
    if not export:
        return 0 if exact else 1
    from .export import ONNX_TOLERANCE, export_onnx, verify_onnx

    onnx_path = export_onnx(fdconv_model, run_dir / "resnet18_fdconv.onnx", input_size=input_size)
    onnx_error = verify_onnx(onnx_path, fdconv_model, batch_sizes=(1, 3))
    _logger.info("  ONNX:   %s", onnx_path)
    _logger.info("  %-8.1e largest relative difference of onnxruntime to PyTorch at batch sizes 1 and 3", onnx_error)
    return 0 if exact and onnx_error <= ONNX_TOLERANCE else 1


def _demo_figures(model: nn.Module, out_dir: Path, seed: int) -> list[Path]:
    """The paper's pictures for the model: group spectra and their orthogonality, FBM maps of a held-out digit."""
    from .viz import save_demo_figures

    images, _ = held_out_digits(model, seed)
    return save_demo_figures(model, images[0], out_dir)
