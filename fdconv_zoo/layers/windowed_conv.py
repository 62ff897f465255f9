"""A 'same' convolution to a few output maps as the sum of its taps' shifted products: written for compilers.

FBM's band attentions are 3x3 convolutions of the input to one map per group. As convolutions, a compiled
graph runs each as an extern call after copying its weight (and its input) into the layout the convolution
library wants. Written as products of shifted windows of the input with each tap's weights, summed over the
taps and the input channels, the compiler makes one reduction kernel of it (bias and sigmoid fused in) and
reads the input in place. In eager mode it would run one op per tap: only compiled graphs use it.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

__all__ = ["windowed_conv"]


def _window(x: torch.Tensor, offsets: tuple[int, ...], kernel: tuple[int, ...]) -> torch.Tensor:
    """``x`` shifted by ``offsets - kernel // 2`` along its trailing dims, zero-filled: the input under one tap of
    a 'same' convolution. Each window pads its own slice, so no padded copy of ``x`` is made."""
    slices, pads = [], []
    for u, k, n in zip(offsets, kernel, x.shape[-len(kernel) :]):
        shift = u - k // 2
        slices.append(slice(max(0, shift), n + min(0, shift)))
        pads.append((max(0, -shift), max(0, shift)))
    window = x[(..., *slices)]
    return F.pad(window, [p for pair in reversed(pads) for p in pair]) if any(any(p) for p in pads) else window


def windowed_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, groups: int = 1
) -> torch.Tensor:
    """``F.conv{n}d(x, weight, bias, padding=k // 2, groups=groups)`` for odd kernels (stride and dilation 1)."""
    kernel = tuple(weight.shape[2:])
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"windowed_conv needs an odd kernel (a 'same' output), got {kernel}")
    cout, cin_g = weight.shape[:2]
    b, spatial, per_group = x.shape[0], x.shape[2:], cout // groups
    grouped = x.view(b, groups, 1, cin_g, *spatial)
    taps = weight.view(groups, per_group, cin_g, -1)
    total = None
    for t, offsets in enumerate(itertools.product(*(range(k) for k in kernel))):
        term = _window(grouped, offsets, kernel) * taps[..., t].view(1, groups, per_group, cin_g, *(1,) * len(kernel))
        total = term if total is None else total + term
    out = total.sum(3)
    if bias is not None:
        out = out + bias.view(1, groups, per_group, *(1,) * len(kernel))
    return out.view(b, cout, *spatial)
