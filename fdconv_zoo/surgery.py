"""Module surgery: turn selected convolutions / linears of a built model into exactly converted FDConv layers.

Model family files only declare *which* layers become FDConv (glob patterns over module names) and
with which settings; this module does the replacement, so every family converts weights the same way.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from .layers.fdconv import FDConv

__all__ = ["PAPER_FDCONV_KWARGS", "convert_to_fdconv", "count_parameters"]

_logger = logging.getLogger(__name__)

# The paper's settings (Faster/Mask R-CNN R50 configs): the layer defaults except kernel_num=64.
PAPER_FDCONV_KWARGS: dict[str, Any] = dict(kernel_num=64)


def convert_to_fdconv(model: nn.Module, patterns: Sequence[str], **fdconv_kwargs: Any) -> list[str]:
    """Replace every ``nn.Conv2d``/``nn.Linear`` whose qualified name matches a glob in ``patterns`` by
    ``FDConv.from_conv(module, **fdconv_kwargs)``, in place. Returns the replaced names.

    The converted model computes the same function as before (attentions start neutral). Raises if a
    pattern matches no convertible module, so a renamed layer cannot silently stay a plain conv.
    """
    matched: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = {
            name: m for name, m in model.named_modules()
            if fnmatch.fnmatchcase(name, pattern) and isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, FDConv)
        }
        if not hits:
            raise ValueError(f"pattern {pattern!r} matches no nn.Conv2d/nn.Linear in {type(model).__name__}")
        matched.update(hits)
    for name, module in matched.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FDConv.from_conv(module, **fdconv_kwargs))
    _logger.debug("converted %d layers of %s to FDConv", len(matched), type(model).__name__)
    return list(matched)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers excluded), the figure the paper reports."""
    return sum(p.numel() for p in model.parameters())
