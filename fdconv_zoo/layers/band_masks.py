"""The Frequency Band Modulation's low-pass masks: Chebyshev boxes, made on the official 64x64 grid and
nearest-resized to the input size, and their Hermitian form for a batched FFT band split.

Shape-only helpers here create no tensors from tensors (pure Python), so they run unchanged under
``torch.compile`` and ``torch.export``, where their results become constants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["FBM_MASK_GRID", "band_axis_factors", "band_mask_factors", "band_masks", "hermitian_band_masks"]

FBM_MASK_GRID = (64, 64)  # official FBM precomputes its masks on this grid and resizes them


def _float32(x: float) -> float:
    """``x`` rounded to the nearest float32 (ties to even), in pure Python: shape-only helpers must not create
    tensors, so that they run unchanged under ``torch.compile`` and ``torch.export`` (as constants)."""
    if x == 0.0:
        return 0.0
    mantissa, exponent = math.frexp(x)
    return math.ldexp(round(mantissa * (1 << 24)), exponent - 24)


def _fftfreq32(n: int, onesided: bool) -> list[float]:
    """``torch.fft.fftfreq(n)`` (or ``rfftfreq``) in float32: the integer ramp times ``float32(1 / n)``."""
    step = _float32(1.0 / n)
    ramp = range(n // 2 + 1) if onesided else (i if i < (n + 1) // 2 else i - n for i in range(n))
    return [_float32(i * step) for i in ramp]


def _nearest_source_index(out_size: int, in_size: int) -> list[int]:
    """Source index of each output of ``F.interpolate(mode='nearest')`` along one axis (ATen's float32 rule)."""
    if out_size == in_size:
        return list(range(out_size))
    if out_size == 2 * in_size:
        return [i >> 1 for i in range(out_size)]
    scale = _float32(in_size / out_size)
    return [min(math.floor(_float32(i * scale)), in_size - 1) for i in range(out_size)]


def band_axis_factors(sizes: Sequence[int], cutoffs: Sequence[int], exact: bool = False) -> list[list[list[bool]]]:
    """Per band, per spatial axis, which frequencies of the ``rfftn`` of a map of ``sizes`` its low-pass box keeps:
    the full ``n``-point axes, then the one-sided ``n//2+1``-point last axis; the mask is their outer product.

    The official mask keeps the bins whose Chebyshev frequency ``max(|f1|, ..., |fn|)`` is below ``0.5 / k +
    1e-8`` (compared in float32: ``0.25 + 1e-8`` rounds to 0.25, smaller cut-offs keep the epsilon), which is
    the product of one test per axis. It is made on the official 64-point grid per axis and nearest-resized to
    the input size (separable too), so its checkpoints behave as trained; ``exact=True`` tests the true
    frequencies of the input size instead, which moves band edges by up to one bin at sizes other than 64 and
    keeps the masks symmetric in +-f.
    """
    last = len(sizes) - 1
    axes = []
    for axis, n in enumerate(sizes):
        onesided = axis == last
        if exact:
            axes.append(_fftfreq32(n, onesided))
        else:
            grid = _fftfreq32(FBM_MASK_GRID[1] if onesided else FBM_MASK_GRID[0], onesided)
            axes.append([grid[i] for i in _nearest_source_index(n // 2 + 1 if onesided else n, len(grid))])
    factors = []
    for k in cutoffs:
        threshold = _float32(0.5 / k + 1e-8)
        factors.append([[abs(f) < threshold for f in freqs] for freqs in axes])
    return factors


def band_mask_factors(
    height: int, width: int, cutoffs: Sequence[int], exact: bool = False
) -> list[tuple[list[bool], list[bool]]]:
    """Row (``height``) and column (``width//2+1``) factors of each 2-D FBM low-pass mask: ``mask = rows x cols``
    (see :func:`band_axis_factors`)."""
    return [(rows, cols) for rows, cols in band_axis_factors((height, width), cutoffs, exact)]


def band_masks(
    height: int, width: int, cutoffs: Sequence[int], exact: bool = False, device: torch.device | None = None
) -> torch.Tensor:
    """The FBM low-pass masks as float tensors (len(cutoffs), height, width//2+1); see ``band_mask_factors``."""
    factors = band_mask_factors(height, width, cutoffs, exact)
    rows = torch.tensor([r for r, _ in factors], dtype=torch.float32, device=device)
    cols = torch.tensor([c for _, c in factors], dtype=torch.float32, device=device)
    return rows[:, :, None] * cols[:, None, :]


def _outer(factors: Sequence[Sequence[float]]) -> torch.Tensor:
    """The outer product of per-axis factors, in float64 (a scalar 1 for no axes)."""
    out = torch.ones((), dtype=torch.float64)
    for axis in factors:
        out = out[..., None] * torch.tensor(axis, dtype=torch.float64)
    return out


def hermitian_band_masks(
    sizes: Sequence[int], cutoffs: Sequence[int], exact: bool = False, dtype=torch.float32, device=None
) -> torch.Tensor:
    """The masks of :func:`band_axis_factors` over the ``rfftn`` bins, (len(cutoffs), *sizes[:-1], sizes[-1]//2+1),
    with the last axis's zero (and Nyquist) bins replaced by their Hermitian part: the mean of the mask at ``f``
    and ``-f`` on the full axes.

    torch's CPU ``irfftn`` reads only the Hermitian part of those bins, and a real input's spectrum is Hermitian
    there, so masking with these gives the same bands on every FFT backend, whatever it does with non-Hermitian
    input (the resized official masks keep ``+f`` but not ``-f`` at some edges). Built from per-axis factors with
    broadcast products only, so traced graphs get them as fused constants.
    """
    last = sizes[-1]
    edges = {0, last // 2} if last % 2 == 0 else {0}
    masks = []
    for band in band_axis_factors(sizes, cutoffs, exact):
        *full, cols = band
        mirrored = [[axis[-i % len(axis)] for i in range(len(axis))] for axis in full]  # the factor at -f
        inner = [0.0 if j in edges else float(keep) for j, keep in enumerate(cols)]
        edge = [float(keep) if j in edges else 0.0 for j, keep in enumerate(cols)]
        rows = _outer([[float(k) for k in axis] for axis in full])
        hermitian_rows = (rows + _outer([[float(k) for k in axis] for axis in mirrored])) / 2
        inner_t, edge_t = torch.tensor(inner, dtype=torch.float64), torch.tensor(edge, dtype=torch.float64)
        masks.append(rows[..., None] * inner_t + hermitian_rows[..., None] * edge_t)
    return torch.stack(masks).to(dtype=dtype, device=device)
