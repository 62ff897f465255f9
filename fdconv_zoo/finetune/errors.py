"""The error of bad fine-tuning input, and the check of a numeric argument that raises it; the command line prints
it as one line instead of a traceback."""

from __future__ import annotations

import math

from ..errors import InputError

__all__ = ["FinetuneInputError", "check_positive"]


class FinetuneInputError(InputError):
    """Bad input to a fine-tune (dataset, labels, images, model name); the message names the fix."""


def check_positive(name: str, value: object, *, integer: bool = False, meaning: str = "", fix: str = "") -> None:
    """Refuse ``value`` unless it is a positive finite number (an ``int`` with ``integer``; never a bool), as the
    command line's argument types do; ``meaning`` and ``fix`` complete the message."""
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value <= 0:
        kind = "integer" if integer else "number"
        raise FinetuneInputError(
            f"{name} must be a positive {kind}{f' ({meaning})' if meaning else ''}, got {value!r}"
            + (f"; {fix}" if fix else "")
        )
