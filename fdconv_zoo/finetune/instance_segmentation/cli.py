"""``fdconv-zoo finetune-instance-segmentation``: the subcommand's arguments and handler (fdconv_zoo.cli
registers them); the options are finetune-detection's, ``--model-arg`` in place of ``--detector-arg``."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ...cli_types import keyword_argument, positive_float, positive_int
from ..detection.cli import _id2label

__all__ = ["add_finetune_instance_segmentation_parser"]

_logger = logging.getLogger("fdconv_zoo")


def add_finetune_instance_segmentation_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``finetune-instance-segmentation`` to ``subparsers``; bad input raises FinetuneInputError (one line,
    exit 2)."""
    parser = subparsers.add_parser(
        "finetune-instance-segmentation",
        help="fine-tune Mask2Former on an FDConv backbone for instance segmentation with HF Trainer, COCO mask AP",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="timm backbone: arch.tag for pretrained weights (e.g. resnet50_fdconv.tv_in1k), local-dir:PATH, "
        "hf-hub:ID, or an architecture alone (random init); or the folder of a transformers FDConv backbone "
        "(fdconv_swin, fdconv_resnet, fdconv_convnext)",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help="a folder with train/ and val/ (or valid/), each with images and _annotations.coco.json "
        "(or annotations.json) whose objects have a segmentation (polygons or RLE); or a cppe-5-layout dataset "
        "whose objects have a segmentation",
    )
    parser.add_argument("--output-dir", required=True, help="checkpoints/ (resumed if present) and model/ go here")
    parser.add_argument("--epochs", type=positive_float, default=12)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate (default 1e-4)")
    parser.add_argument(
        "--backbone-lr-scale", type=positive_float, default=0.1, help="backbone learning rate / --lr (default 0.1)"
    )
    parser.add_argument(
        "--image-size", type=positive_int, default=640, help="square input size, rounded to a multiple of 32"
    )
    parser.add_argument(
        "--frozen-stages",
        type=int,
        default=1,
        choices=[-1, 0, 1, 2, 3, 4],
        help="freeze the stem and this many stages, FDConv attentions excepted (mmdet's frozen_stages; default 1)",
    )
    parser.add_argument(
        "--id2label", help='class names of a dataset without them: a JSON file or object {"0": "coverall", ...}'
    )
    parser.add_argument(
        "--model-arg",
        action="append",
        type=keyword_argument,
        default=[],
        metavar="KEY=VALUE",
        help="Mask2FormerConfig field, e.g. num_queries=50",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR/model")
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
        id2label=_id2label(args.id2label),
        model_config=dict(args.model_arg),
        seed=args.seed,
        overwrite=args.overwrite,
    )
    _logger.info(
        "mask AP %.4f, AP@50 %.4f; saved to %s",
        result.metrics["segm_map"],
        result.metrics["segm_map_50"],
        result.saved_to,
    )
    return 0
