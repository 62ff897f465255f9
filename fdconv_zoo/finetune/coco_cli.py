"""The command-line options the COCO-scored fine-tunes share (finetune-detection, finetune-instance-segmentation)."""

from __future__ import annotations

import argparse
import json

from ..cli_types import SKIP_BAD_IMAGES_HELP, add_keyword_arguments, positive_float, positive_int, text_or_json_file
from .coco_options import FROZEN_STAGES
from .errors import FinetuneInputError

__all__ = ["add_coco_finetune_arguments", "id2label_argument"]


def add_coco_finetune_arguments(
    parser: argparse.ArgumentParser, *, model_help: str, dataset_help: str, config_option: str, config_help: str
) -> None:
    """The shared options, with each task's help for --model and --dataset and its config option
    (``--detector-arg``, ``--model-arg``: repeated KEY=VALUE fields of the head's transformers config)."""
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--dataset", required=True, help=dataset_help)
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
        choices=FROZEN_STAGES,
        help="freeze the stem and this many stages, FDConv attentions excepted (mmdet's frozen_stages; default 1)",
    )
    parser.add_argument(
        "--id2label", help='class names of a dataset without them: a JSON file or object {"0": "coverall", ...}'
    )
    add_keyword_arguments(parser, config_option, config_help)
    parser.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_IMAGES_HELP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR/model")


def id2label_argument(value: str | None) -> dict[int, str] | None:
    """``--id2label``: category id -> name, inline JSON or a .json file (ids as the dataset numbers them)."""
    if value is None:
        return None
    text, _ = text_or_json_file(value, "--id2label")
    try:
        return {int(k): str(v) for k, v in json.loads(text).items()}
    except (ValueError, AttributeError) as error:
        raise FinetuneInputError(
            f'--id2label is not a JSON file or object of id -> name ({error}): e.g. \'{{"0": "coverall", "1": "mask"}}\''
        ) from None
