"""``fdconv-zoo finetune-instance-segmentation``: the subcommand's arguments and handler (fdconv_zoo.cli
registers them); the options are finetune-detection's, ``--model-arg`` in place of ``--detector-arg``."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ..coco_cli import add_coco_finetune_arguments, id2label_argument

__all__ = ["add_finetune_instance_segmentation_parser"]

_logger = logging.getLogger("fdconv_zoo")


def add_finetune_instance_segmentation_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``finetune-instance-segmentation`` to ``subparsers``; bad input raises FinetuneInputError (one line,
    exit 2)."""
    parser = subparsers.add_parser(
        "finetune-instance-segmentation",
        help="fine-tune Mask2Former on an FDConv backbone for instance segmentation with HF Trainer, COCO mask AP",
    )
    add_coco_finetune_arguments(
        parser,
        model_help="timm backbone: arch.tag for pretrained weights (e.g. resnet50_fdconv.tv_in1k), local-dir:PATH, "
        "hf-hub:ID, or an architecture alone (random init); or the folder of a transformers FDConv backbone "
        "(fdconv_swin, fdconv_resnet, fdconv_convnext)",
        dataset_help="a folder with train/ and val/ (or valid/), each with images and _annotations.coco.json "
        "(or annotations.json) whose objects have a segmentation (polygons or RLE); or a cppe-5-layout dataset "
        "whose objects have a segmentation",
        config_option="--model-arg",
        config_help="Mask2FormerConfig field, e.g. num_queries=50",
    )
    parser.set_defaults(func=_finetune_instance_segmentation)
    return parser


def _finetune_instance_segmentation(args: argparse.Namespace) -> int:
    from .finetune import finetune_instance_segmentation

    result = finetune_instance_segmentation(
        args.model,
        args.dataset,
        args.output_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        backbone_lr_scale=args.backbone_lr_scale,
        image_size=args.image_size,
        frozen_stages=args.frozen_stages,
        id2label=id2label_argument(args.id2label),
        model_config=dict(args.model_arg),
        seed=args.seed,
        skip_bad_images=args.skip_bad_images,
        overwrite=args.overwrite,
    )
    _logger.info(
        "mask AP %.4f, AP@50 %.4f; saved to %s",
        result.metrics["segm_map"],
        result.metrics["segm_map_50"],
        result.saved_to,
    )
    return 0
