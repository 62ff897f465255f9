"""argparse value types shared by the subcommands: a bad number is a usage error (exit 2), never a late traceback."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

from .errors import MissingInputError

__all__ = [
    "SKIP_BAD_IMAGES_HELP",
    "add_keyword_arguments",
    "keyword_argument",
    "positive_float",
    "positive_int",
    "text_or_json_file",
]

SKIP_BAD_IMAGES_HELP = "train without the images that cannot be read (logged with a count) instead of stopping"


def positive_int(text: str) -> int:
    """An integer above zero (epochs, batch sizes, image sizes, repeats)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above zero (learning rates, fractional epochs)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def keyword_argument(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (``--model-arg layers=[1,1,1,1]``): the value as a Python literal where it parses, else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. num_classes=10, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def add_keyword_arguments(parser: argparse.ArgumentParser, option: str, help_text: str) -> None:
    """A repeatable ``option KEY=VALUE`` (``--model-arg``, ``--detector-arg``), collected as a list of pairs."""
    parser.add_argument(option, action="append", type=keyword_argument, default=[], metavar="KEY=VALUE", help=help_text)


def text_or_json_file(value: str, option: str) -> tuple[str, str]:
    """An option given inline or as a path to a ``.json`` file holding it: ``(text, where it came from)``."""
    path = Path(value)
    if path.suffix == ".json" and not path.is_file():
        raise MissingInputError(f"{option} file {path} does not exist")
    return (path.read_text(), str(path)) if path.is_file() else (value, option)
