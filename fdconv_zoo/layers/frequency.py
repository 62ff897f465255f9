"""Frequency-domain helpers of FDConv: the disjoint weight groups, the FBM band masks, and the inverse
transform of a weight spectrum.

Both depend only on shapes, so they are computed once per shape on the CPU and cached. The grouping
reproduces the official layer bit for bit (FDCONV_SPEC §4.2): bins are ordered by their float32
radial frequency, computed with the rounding of torch's vectorised ``torch.norm`` (FMA semantics,
emulated exactly in float64 so the result does not depend on the CPU's SIMD level), and sorted with
torch's CPU sort, whose tie order decides most group boundaries.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["FBM_MASK_GRID", "band_masks", "frequency_group_map", "inverse_weight_spectrum", "radial_frequency"]

FBM_MASK_GRID = (64, 64)  # official FBM precomputes its masks on this grid and resizes them


def _round_sum_to_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32(a + b) with a single rounding, for float64 tensors holding exact values in float32's normal range.

    ``(a + b).float()`` rounds twice (to float64, then to float32); that differs from one rounding only
    when the float64 sum lands exactly on a float32 midpoint while the exact sum does not. The error
    term of an exact two-sum says on which side the exact sum lies: nudge those sums one float64 ulp
    towards it before the final rounding.
    """
    s = a + b
    bv = s - a
    err = (a - (s - bv)) + (b - bv)  # a + b == s + err exactly (Knuth's two-sum)
    # A float32 midpoint has exactly the bit below float32's last mantissa bit set among the 29 bits dropped.
    on_midpoint = (s.view(torch.int64) & 0x1FFFFFFF) == 0x10000000
    nudge = on_midpoint & (err != 0)
    if nudge.any():
        s = torch.where(nudge, torch.nextafter(s, torch.where(err > 0, torch.inf, -torch.inf).to(s)), s)
    return s.float()


def radial_frequency(rows: int, cols: int) -> torch.Tensor:
    """float32 distance of every bin of a ``rfft2`` of a (rows, cols) map from the origin, shape (rows, cols//2+1).

    Rounded as the official ``torch.norm`` on x86 SIMD kernels does: ``sqrt(fma(fw, fw, fh * fh))``.
    """
    fh = torch.fft.fftfreq(rows, dtype=torch.float32, device="cpu").double()
    fw = torch.fft.rfftfreq(cols, dtype=torch.float32, device="cpu").double()
    fh_sq = (fh * fh).float().double()  # fh² rounded to float32 (the product is exact in float64)
    fw_sq = fw * fw  # exact in float64
    acc = _round_sum_to_float32(fh_sq[:, None].expand(-1, fw.numel()), fw_sq[None, :].expand(fh.numel(), -1))
    return acc.double().sqrt().float()  # float64 sqrt then one rounding: the correctly rounded float32 sqrt


@functools.lru_cache(maxsize=64)
def _frequency_group_map_cpu(rows: int, cols: int, num_groups: int) -> torch.Tensor:
    dist = radial_frequency(rows, cols).flatten()
    order = torch.sort(dist, stable=False).indices  # CPU std::sort tie order, as the official layer
    num_bins = order.numel()
    # Consecutive chunks of the ascending order; equal to the official L = N / KN split when KN divides N.
    group_of_rank = torch.arange(num_bins, dtype=torch.int64, device="cpu") * num_groups // num_bins
    group_map = torch.empty(num_bins, dtype=torch.int32, device="cpu")
    group_map[order] = group_of_rank.to(torch.int32)
    return group_map.view(rows, cols // 2 + 1)


def frequency_group_map(rows: int, cols: int, num_groups: int) -> torch.Tensor:
    """Group index (0 = lowest frequencies) of every ``rfft2`` bin of a (rows, cols) weight image.

    Returns an int32 CPU tensor of shape (rows, cols//2+1). The official layer needs ``num_groups`` to
    divide the number of bins; here any ``num_groups`` works (groups then differ in size by one bin).
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    return _frequency_group_map_cpu(int(rows), int(cols), int(num_groups)).clone()


def _chebyshev_frequency(height: int, width: int, device: torch.device | None) -> torch.Tensor:
    fh = torch.fft.fftfreq(height, device=device).abs()
    fw = torch.fft.rfftfreq(width, device=device).abs()
    return torch.maximum(fh[:, None], fw[None, :])


def band_masks(height: int, width: int, cutoffs: Sequence[int], exact: bool = False, device: torch.device | None = None) -> torch.Tensor:
    """Low-pass masks of the frequency band modulation, float (len(cutoffs), height, width//2+1).

    Mask ``j`` keeps the ``rfft2`` bins whose Chebyshev frequency is below ``0.5 / cutoffs[j]`` (compared in
    float32 like the official code: ``0.25 + 1e-8`` rounds to 0.25, the smaller cut-offs keep the epsilon).
    By default the masks are made on the official 64x64 grid and nearest-resized to the input size, as the
    official layer does (so its checkpoints behave as trained); ``exact=True`` computes them at the true
    size, which moves band edges by up to one bin at sizes other than 64x64 and keeps the masks symmetric
    in +-f. Plain tensor ops (no cache), so the masks trace into compiled and exported graphs as constants.
    """
    if exact:
        cheb = _chebyshev_frequency(height, width, device)
        return torch.stack([cheb < 0.5 / k + 1e-8 for k in cutoffs]).float()
    cheb = _chebyshev_frequency(*FBM_MASK_GRID, device)
    grid = torch.stack([cheb < 0.5 / k + 1e-8 for k in cutoffs]).float()
    return F.interpolate(grid[:, None], size=(height, width // 2 + 1), mode="nearest")[:, 0]


def inverse_weight_spectrum(spectrum: torch.Tensor, cols: int) -> torch.Tensor:
    """``irfft2`` of a (..., rows, cols//2+1, 2) spectrum of (real, imag) pairs to (..., rows, cols).

    The inverse real FFT reads only the Hermitian part of column 0 (and of the Nyquist column when ``cols`` is
    even); those columns are symmetrised explicitly, in place (pass a tensor you own), so every FFT backend
    computes the same weight whatever it does with non-Hermitian input.
    """
    rows = spectrum.shape[-3]
    neg = (-torch.arange(rows, device=spectrum.device)) % rows
    for c in (0, spectrum.shape[-2] - 1) if cols % 2 == 0 else (0,):
        column, mirrored = spectrum[..., :, c, :], spectrum[..., neg, c, :]
        spectrum[..., :, c, :] = torch.stack((column[..., 0] + mirrored[..., 0], column[..., 1] - mirrored[..., 1]), -1) * 0.5
    return torch.fft.irfft2(torch.view_as_complex(spectrum), s=(rows, cols))
