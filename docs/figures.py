"""Draw the figures of the documentation (docs/assets/*.png) with fdconv_zoo.viz; run after changing them.

    .venv/bin/python docs/figures.py

Offline and a few seconds on a CPU. The figures are committed, so `make docs` does not draw them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from fdconv_zoo import FDConv
from fdconv_zoo.viz import plot_fbm_maps, plot_group_frequency_responses

ASSETS = Path(__file__).resolve().parent / "assets"


def zone_plate(size: int = 96) -> torch.Tensor:
    """A chirp whose local frequency grows with the radius: every band of FBM has something to keep."""
    coords = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cos(math.pi * size / 8 * (x**2 + y**2))


def main() -> None:
    torch.manual_seed(0)
    ASSETS.mkdir(exist_ok=True)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    layer = FDConv.from_conv(conv, kernel_num=64).eval()
    plot_group_frequency_responses(
        layer,
        ASSETS / "fdw_groups.png",
        title="A 64->64 3x3 convolution converted to FDConv (kernel_num=64)",
        overwrite=True,
        dpi=80,
    )
    # A converted layer's band attentions start at 1 (an identity); random attention weights show the mechanism.
    with torch.no_grad():
        for attention in layer.FBM.freq_weight_conv_list:
            attention.weight.normal_(std=0.05)
    x = zone_plate()[None, None].repeat(1, 64, 1, 1) * torch.linspace(0.5, 1.5, 64)[None, :, None, None]
    plot_fbm_maps(
        layer,
        x,
        ASSETS / "fbm_maps.png",
        title="FBM on a zone plate (band attentions set at random)",
        overwrite=True,
        dpi=80,
    )


if __name__ == "__main__":
    main()
