"""Figure files: matplotlib imported only when a figure is drawn (an optional extra), the target checked before any
work, and PNGs written atomically, never replacing a file unasked."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["check_png_target", "require_matplotlib", "save_png"]

_logger = logging.getLogger(__name__)


def require_matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "fdconv_zoo.viz plots need matplotlib, an optional dependency: pip install 'fdconv-zoo[viz]'"
        ) from e
    return matplotlib, Figure, FigureCanvasAgg


def check_png_target(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are written as PNG: give a path ending in .png, got {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a .png file path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    return path


def save_png(fig: Figure, path: str | os.PathLike, overwrite: bool, dpi: int) -> Path:
    """Write ``fig`` to a temporary file beside ``path`` and move it into place: never a half-written PNG."""
    _, _, FigureCanvasAgg = require_matplotlib()
    path = check_png_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # O_EXCL: never follows or reuses an existing file; mode 0o666 lets the umask decide, as for any new file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            FigureCanvasAgg(fig)  # attach the Agg canvas: no pyplot, no GUI backend
            fig.savefig(f, format="png", dpi=dpi)
        if path.exists() and not overwrite:  # appeared while drawing
            raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _logger.info("wrote %s", path)
    return path
