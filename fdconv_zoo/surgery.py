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

from .layers import FDConv, FDConv1d, FDConv3d

__all__ = ["PAPER_FDCONV_KWARGS", "convert_to_fdconv", "count_parameters"]

_logger = logging.getLogger(__name__)

# The paper's settings (Faster/Mask R-CNN R50 configs): the layer defaults except kernel_num=64.
PAPER_FDCONV_KWARGS: dict[str, Any] = dict(kernel_num=64)

# The FDConv class that replaces each convertible module type (nn.Linear: the 2-D layer's token layout).
_FDCONV_FOR: dict[type[nn.Module], type[FDConv]] = {
    nn.Conv1d: FDConv1d,
    nn.Conv2d: FDConv,
    nn.Conv3d: FDConv3d,
    nn.Linear: FDConv,
}


def convert_to_fdconv(model: nn.Module, patterns: Sequence[str], **fdconv_kwargs: Any) -> list[str]:
    """Replace every ``nn.Conv1d/2d/3d``/``nn.Linear`` whose qualified name matches a glob in ``patterns`` by
    ``FDConv1d``/``FDConv``/``FDConv3d``/``FDConv.from_conv(module, **fdconv_kwargs)``, in place. Returns the
    replaced names.

    The converted model computes the same function as before (attentions start neutral). Raises if a
    pattern matches no convertible module, so a renamed layer cannot silently stay a plain conv.
    """
    matched: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = {
            name: m
            for name, m in model.named_modules()
            if fnmatch.fnmatchcase(name, pattern) and isinstance(m, tuple(_FDCONV_FOR)) and not isinstance(m, FDConv)
        }
        if not hits:
            raise ValueError(
                f"pattern {pattern!r} matches no nn.Conv1d/nn.Conv2d/nn.Conv3d/nn.Linear in {type(model).__name__}"
            )
        matched.update(hits)
    for name, module in matched.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        fdconv_class = next(cls for base, cls in _FDCONV_FOR.items() if isinstance(module, base))
        setattr(parent, child, fdconv_class.from_conv(module, **fdconv_kwargs))
    _logger.debug("converted %d layers of %s to FDConv", len(matched), type(model).__name__)
    return list(matched)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers excluded), the figure the paper reports."""
    return sum(p.numel() for p in model.parameters())
