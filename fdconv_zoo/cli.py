"""The ``fdconv-zoo`` command line (also ``python -m fdconv_zoo``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch
import torch.nn as nn

from .layers import FDConv
from .surgery import PAPER_FDCONV_KWARGS, count_parameters

__all__ = ["main"]

_logger = logging.getLogger("fdconv_zoo")

# (name, source layer, input shape): the four 3x3 shapes of ResNet-50, a 1x1 bottleneck conv and a Swin-T MLP linear.
_DEMO_LAYERS = [
    ("resnet50 layer1 3x3", lambda: nn.Conv2d(64, 64, 3, padding=1, bias=False), (2, 64, 56, 56)),
    ("resnet50 layer2 3x3 /2", lambda: nn.Conv2d(128, 128, 3, stride=2, padding=1, bias=False), (2, 128, 56, 56)),
    ("resnet50 layer3 3x3", lambda: nn.Conv2d(256, 256, 3, padding=1, bias=False), (2, 256, 14, 14)),
    ("resnet50 layer4 3x3", lambda: nn.Conv2d(512, 512, 3, padding=1, bias=False), (2, 512, 7, 7)),
    ("resnet50 layer3 1x1", lambda: nn.Conv2d(1024, 256, 1, bias=False), (2, 1024, 14, 14)),
    ("swin-t mlp fc1 (Linear)", lambda: nn.Linear(96, 384), (2, 56, 56, 96)),
]


def _demo(args: argparse.Namespace) -> int:
    """Convert plain layers to FDConv and show that the converted layers compute the same function."""
    torch.manual_seed(args.seed)
    _logger.info("FDConv layer demo: exact conversion of plain layers (paper settings: %s), float32, CPU\n", PAPER_FDCONV_KWARGS)
    header = f"{'layer':26} {'source params':>13} {'FDConv params':>13} {'added':>8} {'max rel. err eval':>17} {'train':>9} {'batch 1 train':>13}"
    _logger.info(header)
    _logger.info("-" * len(header))
    worst = 0.0
    for name, make, shape in _DEMO_LAYERS:
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
    _logger.info("\nLargest relative error %.1e (float32 round-off): each FDConv starts as exactly its source layer.", worst)
    return 0 if worst <= 1e-5 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fdconv-zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="convert plain layers to FDConv and verify the conversion is exact")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
