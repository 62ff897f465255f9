"""Fourier Disjoint Weight (FDW): the kernel stored as its 2-D spectrum, cut into disjoint frequency groups.

A (Cout, Cin, k1, ..., kn) kernel is laid out as the (Cout*k1, Cin*k2*...*kn) "weight image": rows (o, u1),
columns (i, u2, ..., un), so a square 2-D kernel gives the official (Cout*k, Cin*k) image (row o*k+u, column i*k+v
holds kernel entry (o, i, u, v)), a 1-D one (Cout*k, Cin). The image is transformed with ``rfft2``, stored as
(real, imag) pairs and divided by ``min(Cout, Cin) // 2`` (the official ``alpha`` scaling, undone at run time).
With ``param_ratio = P`` copies, each copy holds 1/P of the spectrum so that the neutral layer equals the source
conv (the official converter repeats the full spectrum, giving P times the weight). Per sample, each group's
bins are scaled by that sample's group attention and the image is transformed back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .execution import Workspace, into
from .inverse_fft import inverse_weight_planes, inverse_weight_spectrum, inverse_weight_spectrum_values

__all__ = [
    "WeightSpectrum",
    "conv_weight_to_spectrum",
    "image_shape",
    "image_to_conv_weight",
    "spectrum_to_conv_weight",
    "static_spectrum",
    "weight_image",
]


def image_shape(out_channels: int, in_channels: int, kernel_size: Sequence[int]) -> tuple[int, int]:
    """(rows, cols) of the weight image of a (Cout, Cin, *kernel_size) kernel: (Cout*k1, Cin*k2*...*kn)."""
    return out_channels * kernel_size[0], in_channels * math.prod(kernel_size[1:])


def conv_weight_to_spectrum(weight: torch.Tensor, param_ratio: int = 1) -> torch.Tensor:
    """``dft_weight`` (P, rows, cols//2+1, 2) of a conv weight (Cout, Cin, k1, ..., kn) or linear weight (out, in)
    (a 1x1 convolution), for the (rows, cols) weight image of :func:`image_shape`.

    Computed in float64 and returned in the weight's dtype, so the round trip is exact to float32 rounding.
    """
    if weight.dim() < 2 or weight.dim() > 5:
        raise ValueError(
            f"expected a (Cout, Cin, *kernel) conv weight with 1 to 3 kernel axes or an (out, in) linear weight, got shape {tuple(weight.shape)}"
        )
    w = weight[:, :, None, None] if weight.dim() == 2 else weight
    cout, cin, *kernel = w.shape
    image = w.double().movedim(2, 1).reshape(image_shape(cout, cin, kernel))
    spectrum = torch.view_as_real(torch.fft.rfft2(image)) / (min(cout, cin) // 2) / param_ratio
    return spectrum.to(weight.dtype).unsqueeze(0).repeat(param_ratio, 1, 1, 1)


def image_to_conv_weight(image: torch.Tensor, in_channels: int, kernel_size: Sequence[int]) -> torch.Tensor:
    """The (..., Cout, Cin, *kernel_size) kernel of (..., Cout*k1, Cin*k2*...*kn) weight images."""
    lead, (rows, _) = image.shape[:-2], image.shape[-2:]
    cout = rows // kernel_size[0]
    kernel = image.reshape(*lead, cout, kernel_size[0], in_channels, *kernel_size[1:])
    return kernel.transpose(len(lead) + 1, len(lead) + 2)


def spectrum_to_conv_weight(
    dft_weight: torch.Tensor, in_channels: int, kernel_size: int | Sequence[int] = 1
) -> torch.Tensor:
    """Inverse of :func:`conv_weight_to_spectrum`: the static conv weight (Cout, Cin, *kernel_size) an FDConv
    holds (an int ``kernel_size`` is a square 2-D kernel).

    Sums the P copies, so for an official ``param_ratio > 1`` checkpoint this is the weight the layer
    uses at neutral attention.
    """
    if dft_weight.dim() != 4 or dft_weight.shape[-1] != 2:
        raise ValueError(f"expected a dft_weight of shape (P, rows, cols//2+1, 2), got {tuple(dft_weight.shape)}")
    kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    rows, cols = dft_weight.shape[1], in_channels * math.prod(kernel[1:])
    if rows % kernel[0] or dft_weight.shape[2] != cols // 2 + 1:
        raise ValueError(
            f"dft_weight of shape {tuple(dft_weight.shape)} does not fit in_channels={in_channels}, kernel_size={kernel_size}"
        )
    cout = rows // kernel[0]
    spectrum = dft_weight.double().sum(0) * (min(cout, in_channels) // 2)  # a fresh tensor
    image = inverse_weight_spectrum(spectrum, cols, exportable=False, in_place=True)
    return image_to_conv_weight(image, in_channels, kernel).to(dft_weight.dtype)


class WeightSpectrum(NamedTuple):
    """What every sample's weight image shares: the stored spectrum as real and imaginary planes (P, rows, n2)
    in the compute dtype, the bins' group indices as int64 (``gather`` needs them), and the spectrum's
    (real, imag) pairs (P, rows, n2, 2) the planes are views of unless copied."""

    real: torch.Tensor
    imag: torch.Tensor
    group_index: torch.Tensor
    pairs: torch.Tensor


def static_spectrum(dft_weight: torch.Tensor, frequency_group: torch.Tensor, *, copy_planes: bool) -> WeightSpectrum:
    """The planes of ``dft_weight``, made once per forward for the whole batch (so backward also reassembles
    one gradient for the batch). ``copy_planes`` makes them contiguous copies, for per-bin products several
    times faster than on the interleaved pairs; without it they are views of the parameter, so autograd keeps
    the parameter itself rather than a weight-sized copy per layer."""
    pairs = dft_weight.to(torch.promote_types(dft_weight.dtype, torch.float32))
    spectrum = pairs.movedim(-1, 0).contiguous().movedim(0, -1) if copy_planes else pairs
    real, imag = spectrum.unbind(-1)  # views whose backward stacks both gradients: no zero-filled one per plane
    return WeightSpectrum(real, imag, frequency_group.long(), pairs)


def weight_image(
    spectrum: WeightSpectrum,
    group_attention: torch.Tensor | None,
    *,
    kernel_num: int,
    scale: float,
    cols: int,
    workspace: Workspace | None = None,
    exportable: bool = False,
    in_place: bool = False,
    reads_hermitian_part: bool = False,
) -> torch.Tensor:
    """Per-sample weight images (B, rows, cols): every bin times ``scale`` and its group's attention.

    ``group_attention`` (B, KN*P) or None for a single group (the constant attention 1/(KN*P), one image for
    the batch). ``in_place`` (no autograd) lets the inverse transform write into the fresh planes;
    ``reads_hermitian_part`` is :func:`~.inverse_fft.inverse_weight_planes`'.
    """
    real, imag, group_index, pairs = spectrum
    param_ratio = real.shape[0]
    inverse = dict(exportable=exportable, in_place=in_place, reads_hermitian_part=reads_hermitian_part)
    if group_attention is None:
        factor = scale / (kernel_num * param_ratio)
        planes = real.sum(0, keepdim=True) * factor, imag.sum(0, keepdim=True) * factor
        return inverse_weight_planes(*planes, cols, **inverse)
    # The group attention of every bin, gathered from the KN per sample: no scatter into a zero map. Along the
    # last axis, gather is several times faster than indexing with the group map.
    ka = group_attention.to(real.dtype).view(group_attention.shape[0], param_ratio, 1, kernel_num) * scale
    b, rows = ka.shape[0], real.shape[-2]
    index = group_index.expand(b, param_ratio, *group_index.shape)
    per_bin = into(
        workspace, "per_bin", torch.gather, ka.expand(b, param_ratio, rows, kernel_num), 3, index
    )  # (B, P, rows, n2)
    # With one copy, squeeze rather than index it away: the backward of an index zero-fills a spectrum-sized gradient.
    if param_ratio == 1 and reads_hermitian_part and not exportable:
        # One complex product straight from the interleaved pairs: no planes to multiply and reassemble.
        values = torch.view_as_complex(pairs.squeeze(0).contiguous())  # a copy only for other layouts (channels_last)
        return inverse_weight_spectrum_values(
            into(workspace, "spectrum", torch.mul, values, per_bin.squeeze(1)), cols, workspace
        )
    if param_ratio == 1:
        planes = (("real", real), ("imag", imag))
        real, imag = (into(workspace, name, torch.mul, plane.squeeze(0), per_bin.squeeze(1)) for name, plane in planes)
        return inverse_weight_planes(real, imag, cols, workspace, **inverse)
    return inverse_weight_planes((real * per_bin).sum(1), (imag * per_bin).sum(1), cols, **inverse)
