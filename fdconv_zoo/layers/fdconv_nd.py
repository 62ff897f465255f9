"""FDConv over one and three spatial dimensions: drop-ins for ``nn.Conv1d`` (time series, audio) and ``nn.Conv3d``
(video, volumes). This package's extension; the paper and the official code have the 2-D layer only.

Both are :class:`~.fdconv.FDConv` with another number of spatial axes; every part generalises the 2-D one, which
stays its special case. A (k1, ..., kn) kernel's weight image is (Cout*k1, Cin*k2*...*kn): (Cout*k, Cin) in 1-D,
(Cout*kt, Cin*kh*kw) in 3-D; its ``rfft2`` bins are cut into ``kernel_num`` disjoint groups in radial order as
in 2-D. The spatial attention covers all prod(k) taps, the local attention gives one logit per kernel element,
and FBM splits the input into bands over its ``rfftn`` bins with the same Chebyshev boxes (a 64-point grid per
axis, nearest-resized). Which layers get an FBM: ``use_fbm_if_k_in`` (default ``(3,)``: k=3 in 1-D, 3x3x3 in 3-D).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn as nn

from .fdconv import FDConv

__all__ = ["FDConv1d", "FDConv3d"]


class FDConv1d(FDConv):
    """Frequency Dynamic Convolution over one spatial axis, a drop-in replacement for ``nn.Conv1d``.

    Takes ``(B, Cin, L)`` inputs; the arguments are :class:`FDConv`'s (an int ``k`` in ``use_fdconv_if_k_in``
    stands for a length-k kernel). ``from_conv`` converts an ``nn.Conv1d`` exactly.
    """

    spatial_dims: ClassVar[int] = 1

    @classmethod
    def from_conv(cls, module: nn.Conv1d, **fdconv_kwargs: Any) -> FDConv1d:  # type: ignore[override]
        """An FDConv1d computing exactly ``module``'s function (attentions neutral), its weight converted."""
        return super().from_conv(module, **fdconv_kwargs)


class FDConv3d(FDConv):
    """Frequency Dynamic Convolution over three spatial axes, a drop-in replacement for ``nn.Conv3d``.

    Takes ``(B, Cin, D, H, W)`` inputs; the arguments are :class:`FDConv`'s (an int ``k`` in
    ``use_fdconv_if_k_in`` stands for the k x k x k kernel). ``from_conv`` converts an ``nn.Conv3d`` exactly.
    """

    spatial_dims: ClassVar[int] = 3

    @classmethod
    def from_conv(cls, module: nn.Conv3d, **fdconv_kwargs: Any) -> FDConv3d:  # type: ignore[override]
        """An FDConv3d computing exactly ``module``'s function (attentions neutral), its weight converted."""
        return super().from_conv(module, **fdconv_kwargs)
