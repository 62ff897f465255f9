"""The FBM band split as matrix products: ``irfftn(rfftn(x) * mask_k)`` for every cut-off, without FFTs.

The masks (:mod:`.band_masks`) are separable boxes that keep few frequencies, so every band is computed as a
product of partial DFTs (plain ``matmul``: it differentiates, compiles and exports to ONNX; on large maps of
AVX-512 CPUs the same products run as 1x1 convolutions, see :mod:`.convolution_matmul`). The eager CPU plan and
exported graphs use it; accelerators and compiled graphs use the batched FFT form of :mod:`.band_modulation`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch

from .band_masks import band_axis_factors, band_mask_factors
from .convolution_matmul import convolution_matmul

__all__ = ["band_lowpass", "iter_band_lowpass"]


def _dft_basis(
    n: int, frequencies: list[int], dtype: torch.dtype, device: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``2 pi t f / n`` for t < n and the given frequencies, (n, len(frequencies)) each.

    The phase ``t f mod n`` is exact in integers, so the basis is accurate for any size; built in float64.
    """
    t = torch.arange(n, dtype=torch.int64, device=device)
    f = torch.tensor(frequencies, dtype=torch.int64, device=device)
    phase = (t[:, None] * f[None, :]).remainder(n).to(torch.float64) * (2 * math.pi / n)
    return phase.cos().to(dtype), phase.sin().to(dtype)


def _nested_order(keeps: list[list[bool]]) -> tuple[list[int], list[int]]:
    """Indices kept by any band, most-kept first, and the number each band keeps (a prefix of that order)."""
    counts = [sum(column) for column in zip(*keeps)]
    order = sorted((i for i, n in enumerate(counts) if n), key=lambda i: -counts[i])
    return order, [sum(keep) for keep in keeps]


class _RealAxisBasis(NamedTuple):
    """A real basis of a full (complex) FFT axis restricted to the bands' kept frequencies: per frequency magnitude
    ``m``, the column ``cos(2 pi t m / n)`` followed by ``sin(2 pi t m / n)`` (none for ``m = 0`` or ``n / 2``,
    where it vanishes), most-kept magnitudes first, so every band's columns are a prefix.

    Frequencies ``+m`` and ``-m`` share both columns, which is why the basis has about half the 2 x (kept
    frequencies) columns of the complex partial DFT. A band that keeps both counts them twice (``weights`` 2),
    one that keeps only ``sign * m`` (the resized official masks keep ``+m`` at their edge, not ``-m``) once,
    plus an odd term on the pair of columns at ``unpaired``'s positions."""

    columns: list[tuple[int, bool]]  # (magnitude, is the sine) per column
    counts: list[int]  # columns per band (a prefix)
    weights: list[list[int]]  # per band, per column of its prefix: how many of +-m it keeps (1 or 2)
    unpaired: list[list[tuple[int, int]]]  # per band: (position of the cosine column, sign of the kept frequency)


def _real_axis_basis(n: int, keeps: list[list[bool]]) -> _RealAxisBasis:
    """The :class:`_RealAxisBasis` of an ``n``-point axis for each band's kept bins ``keeps`` (nested masks)."""

    def signs(band: list[bool], m: int) -> list[int]:  # which of +m, -m the band keeps
        kept = [1] if band[m] else []
        return kept + [-1] if 0 < m and 2 * m != n and band[n - m] else kept

    tiers = {m: sum(bool(signs(band, m)) for band in keeps) for m in range(n // 2 + 1)}
    order = sorted((m for m, tier in tiers.items() if tier), key=lambda m: -tiers[m])
    columns = [(m, is_sine) for m in order for is_sine in ((False, True) if m and 2 * m != n else (False,))]
    counts, weights, unpaired = [], [], []
    for band in keeps:
        kept = [m for m in order if signs(band, m)]
        if kept != order[: len(kept)]:
            raise ValueError("FBM band masks must be nested (every cut-off's box inside the next larger one)")
        count = sum(1 if m == 0 or 2 * m == n else 2 for m in kept)
        counts.append(count)
        weights.append([len(signs(band, m)) for m, _ in columns[:count]])
        unpaired.append(
            [
                (p, signs(band, m)[0])
                for p, (m, is_sine) in enumerate(columns[:count])
                if not is_sine and m and 2 * m != n and len(signs(band, m)) == 1
            ]
        )
    return _RealAxisBasis(columns, counts, weights, unpaired)


def _odd_term(pair: torch.Tensor) -> torch.Tensor:
    """The spectrum rows a lone frequency ``+m`` adds beside its even part: for the (cos, sin) rows of one
    magnitude, columns interleaved as (cos, sin) per column frequency, ``[[a, c], [b, e]] -> [[-e, b], [c, -a]]``
    in each 2x2 block (the imaginary part of its inverse DFT, odd in ``t - s``)."""
    blocks = pair.unflatten(-1, (pair.shape[-1] // 2, 2)).flip(-3).flip(-1)  # [[e, b], [c, a]]
    sign = torch.tensor([[-1.0, 1.0], [1.0, -1.0]], dtype=pair.dtype, device=pair.device)[:, None, :]
    return (blocks * sign).flatten(-2)


def band_lowpass(
    x: torch.Tensor, cutoffs: Sequence[int], exact: bool = False, spatial_dims: int = 2, convolution_gemms: bool = False
) -> list[torch.Tensor]:
    """``irfftn(rfftn(x) * mask_k)`` over the last ``spatial_dims`` axes of ``x`` for every cut-off, as matrix
    products (1-D and 3-D: :func:`_band_lowpass_nd`; 2-D below).

    The masks are separable boxes that keep few frequencies (a quarter of the bins at most), so each band is a
    product of partial DFTs: analysis onto the kept frequencies of all bands (once), then a synthesis per
    band from its subset; along H, a real (cos, sin) basis per frequency magnitude, half the columns of the
    complex one. This costs O(H + W) multiply-adds per element in a few GEMMs, several times less
    than four 2-D FFTs on the CPU at the feature sizes FBM runs on, and is plain ``matmul``: it differentiates,
    compiles and exports to ONNX. It reproduces torch's ``irfft2`` exactly in exact arithmetic, including its
    reading of only the real part of the zero and Nyquist columns when a resized mask is not symmetric.
    ``convolution_gemms`` (2-D only) runs the same products as 1x1 convolutions (:func:`convolution_matmul`).
    """
    return list(iter_band_lowpass(x, cutoffs, exact, spatial_dims, convolution_gemms))


class _BandSynthesis(NamedTuple):
    """One 2-D band's synthesis: its ``rows`` x ``2 * cols`` prefix of the shared analysis, the positions of the
    (cos, sin) row pairs of its lone frequencies (odd terms appended to the block), and the matrices either side
    (``synth_h @ block @ synth_w``, rows first where that multiplies less)."""

    rows: int
    cols: int
    unpaired: tuple[int, ...]
    synth_h: torch.Tensor  # (H, rows + 2 * len(unpaired))
    synth_w: torch.Tensor  # (2 * cols, W)
    rows_first: bool


class _BandMatrices(NamedTuple):
    """The constant matrices of the 2-D band split of one map size: the shared analysis along W and H, and each
    band's synthesis (None for a band that keeps nothing)."""

    analysis_w: torch.Tensor  # (W, 2c): the W-spectrum's (cos, sin) parts, interleaved per W frequency
    analysis_h: torch.Tensor  # (q, H): the real basis along H (a band's columns are a prefix of both)
    bands: tuple[_BandSynthesis | None, ...]


def _band_matrices(
    h: int, w: int, cutoffs: tuple[int, ...], exact: bool, dtype: torch.dtype, device: torch.device
) -> _BandMatrices | None:
    """The :class:`_BandMatrices` of an (h, w) map, or None where every band is empty (cut-offs below the grid
    resolution)."""
    factors = band_mask_factors(h, w, cutoffs, exact)
    # Each band keeps the bins below its threshold on the same per-axis frequencies, so the kept sets are
    # nested: ordered by how many bands keep them, every band's frequencies are a prefix (a slice, no gather).
    # Along H (a full, complex axis) the frequencies +-m share one real (cos, sin) pair of columns.
    rows = _real_axis_basis(h, [r for r, _ in factors])
    cols, n_cols = _nested_order([c for _, c in factors])
    if not rows.columns or not cols:
        return None
    magnitudes = sorted({m for m, _ in rows.columns})
    cos_m, sin_m = _dft_basis(h, magnitudes, torch.float64, device)
    position = {m: i for i, m in enumerate(magnitudes)}
    basis_h = torch.stack([(sin_m if is_sine else cos_m)[:, position[m]] for m, is_sine in rows.columns], 1)  # (H, q)
    cos_w, sin_w = _dft_basis(w, cols, dtype, device)
    # Real-signal synthesis weights along W: the zero and Nyquist columns count once, the others twice.
    weight_w = torch.tensor([1.0 if j == 0 or 2 * j == w else 2.0 for j in cols], dtype=dtype, device=device) / w
    bands = []
    for rk, ck, weights, unpaired in zip(rows.counts, n_cols, rows.weights, rows.unpaired):
        if rk == 0 or ck == 0:
            bands.append(None)
            continue
        synth_h = basis_h[:, :rk] * torch.tensor(weights, dtype=torch.float64, device=device) / h  # (H, rk)
        if unpaired:
            synth_h = torch.cat([synth_h] + [basis_h[:, p : p + 2] * (sign / h) for p, sign in unpaired], 1)
        wk = weight_w[:ck]
        synth_w = torch.stack([cos_w[:, :ck] * wk, sin_w[:, :ck] * wk], -1).flatten(1).T  # (2ck, W)
        n_h = synth_h.shape[1]
        rows_first = h * n_h * 2 * ck + h * 2 * ck * w < n_h * 2 * ck * w + h * n_h * w
        bands.append(_BandSynthesis(rk, ck, tuple(p for p, _ in unpaired), synth_h.to(dtype), synth_w, rows_first))
    return _BandMatrices(torch.stack([cos_w, sin_w], -1).flatten(1), basis_h.to(dtype).T, tuple(bands))


# Eager forwards reuse the matrices of recent map sizes (a cache of tensors, so never filled while tracing).
_cached_band_matrices = functools.lru_cache(maxsize=128)(_band_matrices)


def iter_band_lowpass(
    x: torch.Tensor,
    cutoffs: Sequence[int],
    exact: bool = False,
    spatial_dims: int = 2,
    convolution_gemms: bool = False,
    reuse_output: bool = False,
    reuse_constants: bool = False,
) -> Iterator[torch.Tensor]:
    """:func:`band_lowpass`'s bands one at a time. ``reuse_output`` (only without autograd) writes every 2-D
    ``matmul`` band into one buffer, each valid until the next is made: fresh output-sized tensors cost page
    faults as well as their writes. ``reuse_constants`` (eager only, never while compiling or exporting) takes
    the 2-D split's matrices from a cache of recent map sizes instead of building them in about a millisecond
    of small ops."""
    if spatial_dims != 2:
        yield from _band_lowpass_nd(x, cutoffs, exact, spatial_dims)
        return
    key = (x.shape[-2], x.shape[-1], tuple(cutoffs), exact, x.dtype, x.device)
    if reuse_constants:
        with torch.inference_mode(False):  # inference tensors in the cache could not be saved for a later backward
            matrices = _cached_band_matrices(*key)
    else:
        matrices = _band_matrices(*key)
    if matrices is None:
        yield from (torch.zeros_like(x) for _ in cutoffs)
        return
    matmul = convolution_matmul if convolution_gemms else torch.matmul
    # (..., q, 2c): the real basis along H of the W-spectrum's (cos, sin) parts.
    analysed = matmul(matrices.analysis_h, matmul(x, matrices.analysis_w))
    if reuse_output and not convolution_gemms:  # convolution_matmul has no out=
        last_product = functools.partial(torch.matmul, out=torch.empty(x.shape, dtype=x.dtype, device=x.device))
    else:
        last_product = matmul
    for band in matrices.bands:
        if band is None:
            yield torch.zeros_like(x)
            continue
        width = 2 * band.cols
        block = analysed[..., : band.rows, :width]  # a view: no copy unless the band keeps a lone frequency
        if band.unpaired:
            block = torch.cat([block] + [_odd_term(analysed[..., p : p + 2, :width]) for p in band.unpaired], -2)
        if band.rows_first:  # a small (H, 2ck) intermediate; wins for the wide low bands of large maps
            yield last_product(matmul(band.synth_h, block), band.synth_w)
        else:
            yield last_product(band.synth_h, matmul(block, band.synth_w))


def _along(t: torch.Tensor, axis: int, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` applied along ``axis`` of ``t`` (a matmul on that axis moved last)."""
    return torch.matmul(t.movedim(axis, -1), matrix).movedim(-1, axis)


def _band_lowpass_nd(x: torch.Tensor, cutoffs: Sequence[int], exact: bool, spatial_dims: int) -> list[torch.Tensor]:
    """:func:`band_lowpass` over any number of axes: a real partial DFT along the last axis, complex ones along
    the others onto the frequencies any band keeps (once), then per band the inverse on its prefix of them,
    the complex axes first and the half-spectrum (C2R) last axis at the end, as ``irfftn`` reads it."""
    sizes = tuple(x.shape[-spatial_dims:])
    factors = band_axis_factors(sizes, cutoffs, exact)
    kept = [_nested_order([band[axis] for band in factors]) for axis in range(spatial_dims)]  # (order, counts)
    if any(not order for order, _ in kept):
        return [torch.zeros_like(x) for _ in factors]
    bases = [_dft_basis(n, order, x.dtype, x.device) for n, (order, _) in zip(sizes, kept)]
    axes = range(-spatial_dims, -1)  # the full (complex) axes; the last one is one-sided
    cos_l, sin_l = bases[-1]
    re, im = torch.matmul(x, cos_l), -torch.matmul(x, sin_l)  # spectrum re + i im, with e^{-i theta}
    for axis, (cos, sin) in zip(axes, bases):
        re, im = _along(re, axis, cos) + _along(im, axis, sin), _along(im, axis, cos) - _along(re, axis, sin)
    n_last = sizes[-1]
    weight_l = (
        torch.tensor([1.0 if j == 0 or 2 * j == n_last else 2.0 for j in kept[-1][0]], dtype=x.dtype, device=x.device)
        / n_last
    )
    lows = []
    for band in range(len(factors)):
        counts = [n_kept[band] for _, n_kept in kept]
        if 0 in counts:
            lows.append(torch.zeros_like(x))
            continue
        r, i = (t[(Ellipsis, *(slice(0, c) for c in counts))] for t in (re, im))
        for axis, (cos, sin), n, c in zip(axes, bases, sizes, counts):
            cos_t, sin_t = cos[:, :c].T / n, sin[:, :c].T / n  # synthesis with e^{+i theta}
            r, i = _along(r, axis, cos_t) - _along(i, axis, sin_t), _along(i, axis, cos_t) + _along(r, axis, sin_t)
        wl = weight_l[: counts[-1]]
        lows.append(torch.matmul(r * wl, cos_l[:, : counts[-1]].T) - torch.matmul(i * wl, sin_l[:, : counts[-1]].T))
    return lows
