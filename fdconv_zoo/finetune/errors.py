"""The error of bad fine-tuning input; the command line prints it as one line instead of a traceback."""

from __future__ import annotations

__all__ = ["FinetuneInputError"]


class FinetuneInputError(ValueError):
    """Bad input to a fine-tune (dataset, labels, images, model name); the message names the fix."""
