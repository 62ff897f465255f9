"""A 'same' convolution to a few output maps as the sum of its taps' shifted products: written for compilers.

FBM's band attentions are 3x3 convolutions of the input to one map per group. As convolutions, a compiled
graph runs each as an extern call after copying its weight (and its input) into the layout the convolution
library wants. Written as the product of the input's windows (``unfold`` views of the zero-padded input) with
the weights, summed over the taps and the input channels, the compiler makes one reduction kernel of it that
reads the input in place. Eager mode would materialise that product, kernel-size times the input: only
compiled graphs use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .conv_geometry import same_padding

__all__ = ["windowed_conv"]


def windowed_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, groups: int = 1
) -> torch.Tensor:
    """``F.conv{n}d(x, weight, bias, padding=k // 2, groups=groups)`` for odd kernels (stride and dilation 1)."""
    kernel = tuple(weight.shape[2:])
    padding = same_padding(kernel, "windowed_conv")
    cout, cin_g = weight.shape[:2]
    b, spatial, per_group = x.shape[0], x.shape[2:], cout // groups
    windows = F.pad(x, padding)
    for dim, k in enumerate(kernel):  # (B, Cin, *spatial, *kernel): views of the padded input
        windows = windows.unfold(2 + dim, k, 1)
    windows = windows.unflatten(1, (groups, 1, cin_g))
    taps = weight.view(groups, per_group, cin_g, *(1,) * len(kernel), *kernel)
    out = (windows * taps).sum((3, *range(-len(kernel), 0)))  # over the group's channels and the taps
    if bias is not None:
        out = out + bias.view(1, groups, per_group, *(1,) * len(kernel))
    return out.view(b, cout, *spatial)
