"""A 'same' convolution to few output channels as one 1x1 convolution onto every kernel tap, then shifted sums.

FBM's band attentions come from a 3x3 convolution of the input to three maps. CPU convolution kernels
vectorise over output channels, so with three of them they run far below the rate of a 1x1 convolution, a
plain GEMM over the positions. Here the 1x1 convolution makes each tap's contribution (taps x outputs maps),
and the output is the sum of those maps, each shifted by its tap's offset (zero padding at the borders). At the
FBM inputs of ResNet-50 at 512x512, batch 2, this took 28 against 51 ms in forward on an AVX2 CPU (a
micro-benchmark, not kept); in whole training steps the backward of the shifted sums gave the gain back, so
the execution planner uses it for inference only.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from .conv_geometry import CONV_FUNCTIONS, same_padding

__all__ = ["tap_sum_conv"]


def tap_sum_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, groups: int = 1
) -> torch.Tensor:
    """``F.conv{n}d(x, weight, bias, padding=k // 2, groups=groups)`` for odd kernels (stride and dilation 1)."""
    kernel = weight.shape[2:]
    padding = same_padding(kernel, "tap_sum_conv")
    cout, cin_g, taps = weight.shape[0], weight.shape[1], math.prod(kernel)
    b, spatial, per_group = x.shape[0], x.shape[2:], cout // groups
    # Output channels of a grouped convolution are group-major: (group, tap, output) keeps each group's taps in it.
    pointwise = (
        weight.reshape(groups, per_group, cin_g, taps)
        .permute(0, 3, 1, 2)
        .reshape(groups * taps * per_group, cin_g, *(1,) * len(kernel))
    )
    maps = CONV_FUNCTIONS[len(kernel)](x, pointwise, groups=groups).view(b, groups, taps, per_group, *spatial)
    maps = F.pad(maps, padding)
    shifted = (
        maps[(slice(None), slice(None), t, slice(None), *(slice(u, u + n) for u, n in zip(offsets, spatial)))]
        for t, offsets in enumerate(itertools.product(*(range(k) for k in kernel)))
    )
    out = next(shifted).clone()  # a fresh sum: in-place additions keep autograd's graph (they save nothing)
    for tap in shifted:
        out += tap
    if bias is not None:
        out += bias.view(1, groups, per_group, *(1,) * len(kernel)).to(out.dtype)
    return out.view(b, cout, *spatial)
