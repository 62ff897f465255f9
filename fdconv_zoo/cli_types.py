"""argparse value types shared by the subcommands: a bad number is a usage error (exit 2), never a late traceback."""

from __future__ import annotations

import argparse
import ast
from typing import Any

__all__ = ["keyword_argument", "positive_float", "positive_int"]


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
