"""The ``fdconv-zoo`` command line (also ``python -m fdconv_zoo``).

Bad input to any subcommand (an :class:`~fdconv_zoo.errors.InputError`, or an argument argparse refuses) ends
with one line on stderr, ``fdconv-zoo <command>: error: <what is wrong and the fix>``, and exit status 2;
``--debug`` (or ``FDCONV_ZOO_DEBUG=1``) shows the traceback too. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from typing import NoReturn

import torch
import torch.nn as nn

from .cli_types import SKIP_BAD_IMAGES_HELP, add_keyword_arguments, positive_float, positive_int, text_or_json_file
from .errors import InputError
from .layers import FDConv
from .output_paths import check_writable
from .surgery import PAPER_FDCONV_KWARGS, count_parameters

__all__ = ["DEBUG_ENV", "OneLineErrorParser", "main", "run_reporting_input_errors"]

_logger = logging.getLogger("fdconv_zoo")

DEBUG_ENV = "FDCONV_ZOO_DEBUG"  # set to 1: input errors show their traceback as well
_DEBUG_HELP = f"on an input error, show its traceback too (or set {DEBUG_ENV}=1)"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with its usage errors as one line that points to ``--help`` (not the usage block, then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def run_reporting_input_errors(prog: str, command: Callable[[], int], *, debug: bool = False) -> int:
    """``command()``'s exit status; an :class:`InputError` instead becomes one stderr line and status 2.

    With ``debug`` or ``FDCONV_ZOO_DEBUG=1`` the traceback comes first. Other exceptions propagate: they are bugs,
    and their traceback is what a bug report needs.
    """
    try:
        return command()
    except InputError as error:
        if debug or os.environ.get(DEBUG_ENV, "0") not in ("", "0"):
            traceback.print_exc()
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        sys.stderr.write(f"{prog}: error: {message}\n")
        return 2


# (name, source layer, input shape): the four 3x3 shapes of ResNet-50, a 1x1 bottleneck conv and a Swin-T MLP linear.
_CONVERSION_CHECK_LAYERS = [
    ("resnet50 layer1 3x3", lambda: nn.Conv2d(64, 64, 3, padding=1, bias=False), (2, 64, 56, 56)),
    ("resnet50 layer2 3x3 /2", lambda: nn.Conv2d(128, 128, 3, stride=2, padding=1, bias=False), (2, 128, 56, 56)),
    ("resnet50 layer3 3x3", lambda: nn.Conv2d(256, 256, 3, padding=1, bias=False), (2, 256, 14, 14)),
    ("resnet50 layer4 3x3", lambda: nn.Conv2d(512, 512, 3, padding=1, bias=False), (2, 512, 7, 7)),
    ("resnet50 layer3 1x1", lambda: nn.Conv2d(1024, 256, 1, bias=False), (2, 1024, 14, 14)),
    ("swin-t mlp fc1 (Linear)", lambda: nn.Linear(96, 384), (2, 56, 56, 96)),
]


def _check_conversion(args: argparse.Namespace) -> int:
    """Convert plain layers to FDConv and show that the converted layers compute the same function."""
    torch.manual_seed(args.seed)
    _logger.info(
        "FDConv layer demo: exact conversion of plain layers (paper settings: %s), float32, CPU\n", PAPER_FDCONV_KWARGS
    )
    header = f"{'layer':26} {'source params':>13} {'FDConv params':>13} {'added':>8} {'max rel. err eval':>17} {'train':>9} {'batch 1 train':>13}"
    _logger.info(header)
    _logger.info("-" * len(header))
    worst = 0.0
    for name, make, shape in _CONVERSION_CHECK_LAYERS:
        source = make()
        layer = FDConv.from_conv(source, **PAPER_FDCONV_KWARGS)
        x = torch.randn(shape)
        errors = []
        for train, batch in ((False, shape[0]), (True, shape[0]), (True, 1)):
            source.train(train), layer.train(train)
            with torch.no_grad():
                expected = source(x[:batch])
                errors.append(((layer(x[:batch]) - expected).abs().max() / expected.abs().max()).item())
        worst = max(worst, *errors)
        n_src, n_fd = count_parameters(source), count_parameters(layer)
        _logger.info(
            f"{name:26} {n_src:>13,} {n_fd:>13,} {n_fd - n_src:>8,} {errors[0]:>17.1e} {errors[1]:>9.1e} {errors[2]:>13.1e}"
        )
    _logger.info(
        "\nLargest relative error %.1e (float32 round-off): each FDConv starts as exactly its source layer.", worst
    )
    return 0 if worst <= 1e-5 else 1


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    check_writable(args.output_dir, "--output-dir", folder=True)
    return run_demo(args.output_dir, pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, seed=args.seed)


def _profile(args: argparse.Namespace) -> int:
    """Parameters, FLOPs and (``--time``) eval latency of a timm FDConv model against its base model."""
    import timm

    from . import timm_models  # noqa: F401  (registers the FDConv architectures)
    from .profiling import format_profile, profile_models

    arch, dot, tag = args.model.partition(".")
    fdconv_models = ", ".join(timm.list_models("*_fdconv"))
    if not arch.endswith("_fdconv") or not timm.is_model(arch):
        raise InputError(f"{args.model!r} is not a timm FDConv model; profile takes one of: {fdconv_models}")
    base_name = arch.removesuffix("_fdconv") + dot + tag
    model_kwargs = dict(args.model_arg)
    try:
        fdconv = timm.create_model(args.model, pretrained=False, **model_kwargs)
        base = timm.create_model(base_name, pretrained=False, **model_kwargs)
    except TypeError as error:  # a --model-arg the architecture does not take
        if not model_kwargs:
            raise
        raise InputError(f"--model-arg {', '.join(model_kwargs)}: {error}") from error
    input_size = tuple(args.input_size) if args.input_size else tuple(fdconv.pretrained_cfg["input_size"])
    profiles = profile_models(
        {base_name: base, args.model: fdconv}, input_size, args.batch, timed=args.time, repeats=args.repeats
    )
    _logger.info("%s and %s, random init (the weights do not change the cost)", base_name, args.model)
    _logger.info(format_profile(*profiles, input_size, args.batch, repeats=args.repeats))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .finetune import finetune_classification

    result = finetune_classification(
        args.model,
        args.dataset,
        args.output_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        image_size=args.image_size,
        seed=args.seed,
        model_kwargs=dict(args.model_arg),
        overwrite=args.overwrite,
        skip_bad_images=args.skip_bad_images,
    )
    _logger.info("accuracy %.4f, eval loss %.4f; saved to %s", result.accuracy, result.eval_loss, result.saved_to)
    return 0


def _finetune_segmentation(args: argparse.Namespace) -> int:
    from .finetune import finetune_segmentation
    from .finetune.segmentation_data import parse_id2label

    id2label = None if args.id2label is None else parse_id2label(*text_or_json_file(args.id2label, "--id2label"))
    result = finetune_segmentation(
        args.model,
        args.dataset,
        args.output_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        image_size=args.image_size,
        num_labels=args.num_labels,
        id2label=id2label,
        reduce_labels=args.reduce_labels,
        image_column=args.image_column,
        mask_column=args.mask_column,
        seed=args.seed,
        overwrite=args.overwrite,
        skip_bad_images=args.skip_bad_images,
    )
    _logger.info(
        "mean IoU %.4f, pixel accuracy %.4f; saved to %s", result.mean_iou, result.pixel_accuracy, result.saved_to
    )
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    """Export to ONNX, then compare onnxruntime with PyTorch at two batch sizes; non-zero exit above tolerance."""
    from .export import ONNX_TOLERANCE, check_onnx_output, export_onnx, load_timm_model, model_input_size, verify_onnx

    check_onnx_output(args.out, overwrite=args.overwrite)  # before building the model: refusing costs nothing
    model = load_timm_model(args.model, args.checkpoint, **dict(args.model_arg)).eval()
    input_size = model_input_size(model, args.image_size)
    start = time.perf_counter()
    path = export_onnx(model, args.out, input_size=input_size, opset=args.opset, overwrite=args.overwrite)
    _logger.info(
        "export took %.1f s; checking with onnxruntime at batch sizes 1 and 3, input %s",
        time.perf_counter() - start,
        input_size,
    )
    error = verify_onnx(path, model, batch_sizes=(1, 3))
    verdict = "OK" if error <= ONNX_TOLERANCE else f"FAILED (tolerance {ONNX_TOLERANCE:.0e})"
    _logger.info("max relative error %.2e: %s", error, verdict)
    return 0 if error <= ONNX_TOLERANCE else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="fdconv-zoo", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="pretrained plain ResNet -> exact FDConv conversion -> fine-tune both, on built-in digits (offline)",
    )
    demo.add_argument(
        "--pretrain-epochs",
        type=positive_float,
        default=3,
        help="epochs of the plain model that stands in for pretrained weights",
    )
    demo.add_argument("--epochs", type=positive_float, default=2, help="fine-tuning epochs of each model")
    demo.add_argument("--output-dir", default="runs/demo", help="a new timestamped folder is made inside")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    profile = sub.add_parser(
        "profile", help="parameters, GFLOPs and eval latency of a timm FDConv model against its base model"
    )
    profile.add_argument(
        "model", help="timm FDConv architecture, e.g. resnet50_fdconv (its base: the name without _fdconv); random init"
    )
    profile.add_argument(
        "--input-size", type=positive_int, nargs=3, metavar=("C", "H", "W"), help="input size (default: the model's)"
    )
    profile.add_argument(
        "--batch", type=positive_int, default=1, help="batch size (default 1); FLOPs are for the whole batch"
    )
    profile.add_argument("--time", action="store_true", help="also measure eval latency, both models taking turns")
    profile.add_argument(
        "--repeats", type=positive_int, default=10, help="timed forwards per model with --time (default 10; median)"
    )
    add_keyword_arguments(profile, "--model-arg", "extra timm.create_model keyword (both models)")
    profile.set_defaults(func=_profile)
    check = sub.add_parser("check-conversion", help="convert plain layers to FDConv and verify the conversion is exact")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=_check_conversion)
    onnx = sub.add_parser(
        "export-onnx", help="export a timm (FDConv) model to ONNX (dynamic batch) and check it with onnxruntime"
    )
    onnx.add_argument("model", help="timm architecture (random init), arch.tag, local-dir:PATH or hf-hub:REPO")
    onnx.add_argument("--out", required=True, help="the .onnx file to write")
    onnx.add_argument(
        "--checkpoint", help="weights to load: .safetensors (legacy .pth: tensors only, weights_only=True)"
    )
    onnx.add_argument("--image-size", type=positive_int, help="square input size (default: the model's)")
    onnx.add_argument("--opset", type=positive_int, default=18, help="ONNX opset (default 18)")
    add_keyword_arguments(onnx, "--model-arg", "extra timm.create_model keyword")
    onnx.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    onnx.set_defaults(func=_export_onnx)
    finetune = sub.add_parser("finetune-classification", help="fine-tune a timm (FDConv) classifier with HF Trainer")
    finetune.add_argument(
        "--model",
        required=True,
        help="timm architecture, or arch.tag for pretrained weights (e.g. resnet50_fdconv.tv_in1k)",
    )
    finetune.add_argument(
        "--dataset", required=True, help="'digits', an image folder (one sub-folder per class) or a Hub dataset name"
    )
    finetune.add_argument("--output-dir", required=True, help="checkpoints/ (resumed if present) and model/ go here")
    finetune.add_argument("--epochs", type=positive_float, default=3)
    finetune.add_argument("--batch-size", type=positive_int, default=32)
    finetune.add_argument("--lr", type=positive_float, default=1e-3)
    finetune.add_argument("--image-size", type=positive_int, help="input size (default: the model's)")
    add_keyword_arguments(finetune, "--model-arg", "extra timm.create_model keyword")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR/model")
    finetune.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_IMAGES_HELP)
    finetune.set_defaults(func=_finetune)
    seg = sub.add_parser(
        "finetune-segmentation",
        help="fine-tune an FDConv SegFormer or UperNet on a segmentation dataset with HF Trainer",
    )
    seg.add_argument(
        "--model",
        required=True,
        help="SegFormer or UperNet checkpoint folder or Hub id (native ones are converted to FDConv)",
    )
    seg.add_argument(
        "--dataset",
        required=True,
        help="a save_to_disk folder, a folder of images/ + annotations/, or a Hub dataset name",
    )
    seg.add_argument("--output-dir", required=True, help="checkpoints/ (resumed if present) and model/ go here")
    seg.add_argument("--epochs", type=positive_float, default=3)
    seg.add_argument("--batch-size", type=positive_int, default=8)
    seg.add_argument("--lr", type=positive_float, default=6e-5)
    seg.add_argument("--image-size", type=positive_int, help="square input size (default: the image processor's)")
    seg.add_argument(
        "--num-labels",
        type=positive_int,
        help="number of classes (default: the dataset's names, else largest mask value + 1)",
    )
    seg.add_argument("--id2label", help='class names: a JSON file or object {"0": "background", ...}')
    seg.add_argument(
        "--reduce-labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="0 is 'unlabelled' (ignored), classes are 1..N (default: the image processor's setting)",
    )
    seg.add_argument("--image-column", help="the image column (default: image, pixel_values or img)")
    seg.add_argument(
        "--mask-column", help="the mask column (default: annotation, label, mask, segmentation_mask or semantic_map)"
    )
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR/model")
    seg.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_IMAGES_HELP)
    seg.set_defaults(func=_finetune_segmentation)
    from .finetune.detection.cli import add_finetune_detection_parser

    add_finetune_detection_parser(sub)
    from .finetune.instance_segmentation.cli import add_finetune_instance_segmentation_parser

    add_finetune_instance_segmentation_parser(sub)
    for command in sub.choices.values():  # every subcommand registered above also takes --debug after its name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return run_reporting_input_errors(f"fdconv-zoo {args.command}", partial(args.func, args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
