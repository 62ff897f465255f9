"""``fdconv-zoo finetune-detection``: the subcommand's arguments and handler (fdconv_zoo.cli registers them)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ..coco_cli import add_coco_finetune_arguments, id2label_argument

__all__ = ["add_finetune_detection_parser"]

_logger = logging.getLogger("fdconv_zoo")


def add_finetune_detection_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``finetune-detection`` to ``subparsers``; its bad input raises FinetuneInputError (one line, exit 2)."""
    parser = subparsers.add_parser(
        "finetune-detection",
        help="fine-tune RT-DETRv2 (or D-FINE, DETR) on an FDConv timm backbone with HF Trainer, COCO mAP",
    )
    add_coco_finetune_arguments(
        parser,
        model_help="timm backbone: arch.tag for pretrained weights (e.g. resnet50_fdconv.tv_in1k), local-dir:PATH, "
        "hf-hub:ID, or an architecture alone (random init); ResNet, ConvNeXt, MiT; or the folder of a transformers "
        "FDConv backbone (fdconv_swin, fdconv_resnet, fdconv_convnext)",
        dataset_help="a folder with train/ and val/ (or valid/), each with images and _annotations.coco.json "
        "(or annotations.json); or a cppe-5-layout dataset (save_to_disk folder or Hub name)",
        config_option="--detector-arg",
        config_help="detector config field, e.g. num_queries=100",
    )
    parser.add_argument("--detector", default="rt-detr-v2", choices=["rt-detr-v2", "d-fine", "detr"])
    parser.set_defaults(func=_finetune_detection)
    return parser


def _finetune_detection(args: argparse.Namespace) -> int:
    from .finetune import finetune_detection

    result = finetune_detection(
        args.model,
        args.dataset,
        args.output_dir,
        detector=args.detector,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        backbone_lr_scale=args.backbone_lr_scale,
        image_size=args.image_size,
        frozen_stages=args.frozen_stages,
        id2label=id2label_argument(args.id2label),
        detector_config=dict(args.detector_arg),
        seed=args.seed,
        skip_bad_images=args.skip_bad_images,
        overwrite=args.overwrite,
    )
    _logger.info("mAP %.4f, mAP@50 %.4f; saved to %s", result.metrics["map"], result.metrics["map_50"], result.saved_to)
    return 0
