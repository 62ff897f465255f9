"""Convolution geometry shared by the plain fallback and the per-sample formulations of FDConv.

The layer keeps ``nn.Conv1d/2d/3d``'s attributes (``kernel_size``, ``stride``, ``padding``, ``dilation``,
``padding_mode``, ``_reversed_padding_repeated_twice``); these helpers read them from any such module and work
for any number of spatial dimensions (the rank of the weight or input says which).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CONV_CLASSES",
    "CONV_FUNCTIONS",
    "ConvGeometry",
    "conv_nd",
    "normalised_conv_args",
    "output_size",
    "pad_explicitly",
    "same_padding",
]

CONV_CLASSES: dict[int, type[nn.modules.conv._ConvNd]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_FUNCTIONS: dict[int, Callable[..., torch.Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_ATTRIBUTES = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
    "_reversed_padding_repeated_twice",
)


class ConvGeometry(Protocol):
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    padding_mode: str
    _reversed_padding_repeated_twice: list[int]


def _needs_explicit_padding(geometry: ConvGeometry) -> bool:
    """Non-zero padding modes, and the string forms ('same', 'valid'), are padded before the convolution."""
    return geometry.padding_mode != "zeros" or isinstance(geometry.padding, str)


def pad_explicitly(x: torch.Tensor, geometry: ConvGeometry) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``x`` padded as the convolution would pad it, and the padding left for the convolution itself."""
    if not _needs_explicit_padding(geometry):
        return x, geometry.padding  # type: ignore[return-value]
    mode = "constant" if geometry.padding_mode == "zeros" else geometry.padding_mode
    return F.pad(x, geometry._reversed_padding_repeated_twice, mode=mode), (0,) * len(geometry.kernel_size)


def same_padding(kernel: Sequence[int], who: str) -> list[int]:
    """``F.pad``'s amounts (last axis first) that keep a stride-1 convolution's output at its input's size; ``who``
    names the caller in the error, since only odd kernels have them."""
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"{who} needs an odd kernel (a 'same' output), got {tuple(kernel)}")
    return [p for k in reversed(kernel) for p in (k // 2, k // 2)]


def output_size(size: Sequence[int], geometry: ConvGeometry) -> tuple[int, ...]:
    """Spatial output size of the convolution for an input of spatial ``size``."""
    if _needs_explicit_padding(geometry):
        pads = geometry._reversed_padding_repeated_twice  # last axis first
        size = [n + pads[2 * (len(size) - 1 - i)] + pads[2 * (len(size) - 1 - i) + 1] for i, n in enumerate(size)]
        padding: Sequence[int] = (0,) * len(size)
    else:
        padding = geometry.padding  # type: ignore[assignment]
    return tuple(
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(size, padding, geometry.dilation, geometry.kernel_size, geometry.stride)
    )


def normalised_conv_args(spatial_dims: int, *args: Any) -> dict[str, Any]:
    """``nn.Conv{n}d``'s normalised convolution arguments (tuples, padding list) for its positional ``args``;
    a "meta" conv validates them, allocating nothing."""
    spec = CONV_CLASSES[spatial_dims](*args, device="meta")
    return {name: getattr(spec, name) for name in _CONV_ATTRIBUTES}


def conv_nd(
    x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry, groups: int = 1, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv1d/2d/3d`` (by the weight's rank) with ``geometry``'s stride, padding (and mode) and dilation."""
    conv = CONV_FUNCTIONS[weight.dim() - 2]
    if geometry.padding_mode != "zeros":
        x, _ = pad_explicitly(x, geometry)
        return conv(x, weight, bias, geometry.stride, 0, geometry.dilation, groups)
    return conv(x, weight, bias, geometry.stride, geometry.padding, geometry.dilation, groups)
