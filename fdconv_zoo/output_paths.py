"""Refusing an output path that cannot be written before any work, instead of failing after it (training, export)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

__all__ = ["check_writable"]


def check_writable(path: str | os.PathLike, option: str, *, folder: bool) -> Path:
    """``path`` as a ``Path`` if it can be written as a folder (``folder=True``) or a file; else :class:`InputError`.

    Missing parent folders are fine (the writers create them) when the nearest existing one is a writable
    folder. ``option`` is what the user passed it as (``--out``, ``output_dir``); the message names it.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file, not a folder; choose a folder")
    if not folder and path.is_dir():
        raise InputError(f"{option} {path} is a folder; give the file to write, e.g. {path / 'model.onnx'}")
    nearest = (path if folder else path.parent).absolute()
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        raise InputError(f"cannot write {option} {path}: {nearest} is a file, not a folder; choose another {option}")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {option} {path}: no permission to write in {nearest}; choose another {option}")
    return path
