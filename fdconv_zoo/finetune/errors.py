"""The error of bad fine-tuning input; the command line prints it as one line instead of a traceback."""

from __future__ import annotations

from ..errors import InputError

__all__ = ["FinetuneInputError"]


class FinetuneInputError(InputError):
    """Bad input to a fine-tune (dataset, labels, images, model name); the message names the fix."""
