"""The Frequency Band Modulation's low-pass masks: Chebyshev boxes, made on the official 64x64 grid and
nearest-resized to the input size, and their Hermitian form for a batched FFT band split.

Shape-only helpers here create no tensors from tensors (pure Python), so they run unchanged under
``torch.compile`` and ``torch.export``, where their results become constants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["FBM_MASK_GRID", "band_axis_factors", "band_mask_factors", "band_masks", "hermitian_band_pass_masks"]

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


def hermitian_band_pass_masks(
    sizes: Sequence[int], cutoffs: Sequence[int], exact: bool, gain: float, dtype=torch.float32, device=None
) -> torch.Tensor:
    """``gain`` times the band-pass masks over the ``rfftn`` bins, (len(cutoffs)+1, *sizes[:-1], sizes[-1]//2+1),
    highest band first: ``1 - m_0``, ``m_{j-1} - m_j``, then the lowest band ``m_{n-1}``, where ``m_j`` are the
    low-pass masks of :func:`band_axis_factors` with the last axis's zero (and Nyquist) bins replaced by their
    Hermitian part, the mean of the mask at ``f`` and ``-f`` on the full axes; they sum to ``gain``.

    torch's CPU ``irfftn`` reads only the Hermitian part of those bins, and a real input's spectrum is Hermitian
    there, so masking with these gives the same bands on every FFT backend, whatever it does with non-Hermitian
    input (the resized official masks keep ``+f`` but not ``-f`` at some edges). Built from small per-axis
    tensors by broadcast products and one difference of shifted slices, so a compiler fuses the whole
    construction into the kernel that applies the masks.
    """
    last = sizes[-1]
    edges = {0, last // 2} if last % 2 == 0 else {0}
    # Low-pass levels -1 (keeps everything) to n (keeps nothing); the pass bands are differences of neighbours.
    bands = band_axis_factors(sizes, cutoffs, exact)
    bins = [len(axis) for axis in bands[0]] if bands else [*sizes[:-1], last // 2 + 1]
    levels = [[[True] * b for b in bins], *bands, [[False] * b for b in bins]]
    full = len(sizes) - 1

    def axis_tensor(values: list[list[float]], axis: int) -> torch.Tensor:  # (levels, 1, ..., n_axis, ..., 1)
        shape = [len(values)] + [1] * (full + 1)
        shape[1 + axis] = len(values[0])
        return torch.tensor(values, dtype=torch.float64).view(shape)

    rows = mirrored_rows = torch.ones((), dtype=torch.float64)
    for axis in range(full):
        keeps = [[float(k) for k in level[axis]] for level in levels]
        rows = rows * axis_tensor(keeps, axis)
        mirrored_rows = mirrored_rows * axis_tensor([[k[-i % len(k)] for i in range(len(k))] for k in keeps], axis)
    cols = [level[full] for level in levels]
    inner = axis_tensor([[0.0 if j in edges else float(k) for j, k in enumerate(c)] for c in cols], full)
    edge = axis_tensor([[float(k) if j in edges else 0.0 for j, k in enumerate(c)] for c in cols], full)
    lows = rows * inner + (rows + mirrored_rows) * edge / 2
    return ((lows[:-1] - lows[1:]) * gain).to(dtype=dtype, device=device)
