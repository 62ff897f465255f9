"""What a fine-tune writes and logs: the overwrite guard, the atomic model-folder swap, the metrics table."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import OutputExistsError
from ..output_paths import check_writable

__all__ = ["log_metrics_table", "refuse_to_overwrite", "save_atomically"]

_logger = logging.getLogger(__name__)


def log_metrics_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    """Log ``rows`` of (name, value) as a two-column table (one log record, so it stays together)."""
    width = max(len("metric"), *(len(name) for name, _ in rows))
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    _logger.info("\n".join(lines))


def refuse_to_overwrite(output_dir: Path, overwrite: bool) -> Path:
    """``output_dir/model``; refused before training when it holds a finished model and ``overwrite`` is off, or
    when ``output_dir`` cannot be written (rather than at the first checkpoint)."""
    saved = check_writable(output_dir, "--output-dir", folder=True) / "model"
    if saved.exists() and not overwrite:
        raise OutputExistsError(
            f"{saved} already holds a fine-tuned model; pass --overwrite (overwrite=True) to replace it, "
            "or choose another --output-dir"
        )
    return saved


def save_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """``write(folder)`` into a temporary sibling folder, then swap it in: ``target`` is never half written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
