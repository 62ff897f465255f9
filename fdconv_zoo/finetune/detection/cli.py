"""``fdconv-zoo finetune-detection``: the subcommand's arguments and handler (fdconv_zoo.cli registers them)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from ...cli_types import keyword_argument, positive_float, positive_int, text_or_json_file
from ..errors import FinetuneInputError

__all__ = ["add_finetune_detection_parser"]

_logger = logging.getLogger("fdconv_zoo")


def add_finetune_detection_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``finetune-detection`` to ``subparsers``; its bad input raises FinetuneInputError (one line, exit 2)."""
    parser = subparsers.add_parser(
        "finetune-detection",
        help="fine-tune RT-DETRv2 (or D-FINE, DETR) on an FDConv timm backbone with HF Trainer, COCO mAP",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="timm backbone: arch.tag for pretrained weights (e.g. resnet50_fdconv.tv_in1k), local-dir:PATH, "
        "hf-hub:ID, or an architecture alone (random init); ResNet, ConvNeXt, MiT; or the folder of a transformers "
        "FDConv backbone (fdconv_swin, fdconv_resnet, fdconv_convnext)",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help="a folder with train/ and val/ (or valid/), each with images and _annotations.coco.json "
        "(or annotations.json); or a cppe-5-layout dataset (save_to_disk folder or Hub name)",
    )
    parser.add_argument("--output-dir", required=True, help="checkpoints/ (resumed if present) and model/ go here")
    parser.add_argument("--detector", default="rt-detr-v2", choices=["rt-detr-v2", "d-fine", "detr"])
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
        "--detector-arg",
        action="append",
        type=keyword_argument,
        default=[],
        metavar="KEY=VALUE",
        help="detector config field, e.g. num_queries=100",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR/model")
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
        id2label=_id2label(args.id2label),
        detector_config=dict(args.detector_arg),
        seed=args.seed,
        overwrite=args.overwrite,
    )
    _logger.info("mAP %.4f, mAP@50 %.4f; saved to %s", result.metrics["map"], result.metrics["map_50"], result.saved_to)
    return 0


def _id2label(value: str | None) -> dict[int, str] | None:
    if value is None:
        return None
    text, _ = text_or_json_file(value, "--id2label")
    try:
        return {int(k): str(v) for k, v in json.loads(text).items()}
    except (ValueError, AttributeError) as error:
        raise FinetuneInputError(
            f'--id2label is not a JSON file or object of id -> name ({error}): e.g. \'{{"0": "coverall", "1": "mask"}}\''
        ) from None
