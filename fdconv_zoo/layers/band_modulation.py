"""Frequency Band Modulation (FBM): the input split into frequency bands, each re-weighted by a spatial map.

The official masks are Chebyshev low-pass boxes made on a 64x64 grid and nearest-resized to the input size. They
are separable and keep few frequencies, so every band is computed as a product of partial DFTs (plain
``matmul``: it differentiates, compiles and exports to ONNX; on large maps of AVX-512 CPUs the same products run
as 1x1 convolutions, see :mod:`.convolution_matmul`). 1-D and 3-D inputs (this package's extension) get the
same boxes over their ``rfftn`` bins, made on a 64-point grid per axis and resized the same way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .bounded_attention import bounded_attention
from .conv_geometry import CONV_CLASSES, conv_nd
from .convolution_matmul import convolution_matmul
from .execution import float32_region
from .tap_sum_conv import tap_sum_conv

__all__ = [
    "FBM_MASK_GRID",
    "FrequencyBandModulation",
    "band_axis_factors",
    "band_lowpass",
    "band_mask_factors",
    "band_masks",
    "iter_band_lowpass",
]

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


class FrequencyBandModulation(nn.Module):
    """Splits the input into frequency bands and re-weights each band with a spatial attention map.

    With all attentions equal to 1 the bands telescope back to the input, so zero-initialised
    attention convolutions make the module an identity.
    """

    def __init__(
        self,
        in_channels: int,
        k_list: Sequence[int] = (2, 4, 8),
        lowfreq_att: bool = False,
        act: str = "sigmoid",
        spatial_group: int = 1,
        spatial_kernel: int = 3,
        init: str = "zero",
        exact_masks: bool = False,
        spatial_dims: int = 2,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if act not in ("sigmoid", "tanh", "softmax"):
            raise ValueError(f"fbm_cfg act must be 'sigmoid', 'tanh' or 'softmax', got {act!r}")
        if spatial_group > 64:
            spatial_group = in_channels  # official rule
        if in_channels % spatial_group:
            raise ValueError(f"fbm_cfg spatial_group={spatial_group} must divide in_channels={in_channels}")
        self.k_list = [int(k) for k in k_list]
        self.lowfreq_att = lowfreq_att
        self.act = act
        self.spatial_group = spatial_group
        self.init = init
        self.exact_masks = exact_masks
        self.spatial_dims = spatial_dims
        n_att = len(self.k_list) + int(lowfreq_att)
        self.freq_weight_conv_list = nn.ModuleList(
            CONV_CLASSES[spatial_dims](
                in_channels,
                spatial_group,
                spatial_kernel,
                padding=spatial_kernel // 2,
                groups=spatial_group,
                bias=True,
                device=device,
                dtype=dtype,
            )
            for _ in range(n_att)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in self.freq_weight_conv_list:
            if self.init == "zero":  # official: N(0, 1e-6^2); exactly zero makes the module an exact identity
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
            else:
                conv.reset_parameters()

    def _attention_maps(self, x: torch.Tensor, tap_sum: bool = False) -> torch.Tensor:
        """All band attentions from one grouped conv: (B, n_att, G, *spatial); ``tap_sum`` computes it with
        :func:`~.tap_sum_conv.tap_sum_conv` (odd kernels)."""
        convs = self.freq_weight_conv_list
        n, g = len(convs), self.spatial_group
        weight = torch.stack([c.weight for c in convs], 1)  # (G, n, Cin/G, s, ...): group-major for groups=G
        bias = torch.stack([c.bias for c in convs], 1)
        if tap_sum and all(k % 2 for k in convs[0].kernel_size):
            logits = tap_sum_conv(x, weight.flatten(0, 1), bias.flatten(), groups=g)
        else:
            logits = conv_nd(x, weight.flatten(0, 1), convs[0], groups=g, bias=bias.flatten())
        return bounded_attention(logits.unflatten(1, (g, n)).transpose(1, 2), self.act, dim=2)

    def forward(
        self,
        x: torch.Tensor,
        *,
        in_place: bool = False,
        exporting: bool = False,
        recompute: bool = False,
        convolution_gemms: bool = False,
        tap_sum_attention: bool = False,
        reuse_constants: bool = False,
    ) -> torch.Tensor:
        """Modulated ``x`` (B, C, *spatial). ``in_place`` (only without autograd) accumulates the bands into one
        buffer; ``recompute`` keeps only ``x`` and the attention maps for backward and redoes the band split
        there (the bands are several input-sized tensors per layer, and the split is cheap next to the rest);
        ``convolution_gemms`` runs the split's products as 1x1 convolutions (see :func:`band_lowpass`);
        ``tap_sum_attention`` makes the attention maps by :func:`~.tap_sum_conv.tap_sum_conv`;
        ``reuse_constants`` takes the split's matrices from a cache (eager only, see :func:`iter_band_lowpass`)."""
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        att = self._attention_maps(x, tap_sum_attention).to(compute_dtype)  # (B, n_att, G, *spatial)
        if recompute:
            return checkpoint(
                self._modulate, x, att, in_place, exporting, convolution_gemms, reuse_constants, use_reentrant=False
            )
        return self._modulate(x, att, in_place, exporting, convolution_gemms, reuse_constants)

    def _modulate(
        self,
        x: torch.Tensor,
        att: torch.Tensor,
        in_place: bool,
        exporting: bool,
        convolution_gemms: bool,
        reuse_constants: bool,
    ) -> torch.Tensor:
        c = x.shape[1]
        g, n = self.spatial_group, len(self.k_list)
        xf = x.to(att.dtype)
        # sum_j a_j (low_{j-1} - low_j) + a_n low_{n-1}, with low_{-1} = x and a_n = 1 (or the low-band
        # attention), telescoped into a_0 x + sum_j (a_{j+1} - a_j) low_j: no high-band tensors.
        last = att[:, n:] if self.lowfreq_att else torch.ones_like(att[:, :1])
        coefficients = torch.cat([att[:, 1:n], last], 1) - att[:, :n]  # (B, n, G, *spatial)
        out = att[:, 0, :, None] * xf.unflatten(1, (g, c // g))
        with float32_region(x.device.type, exporting):  # the band split stays in float32 under autocast
            # In place (no autograd), each band is consumed before the next is written into the same buffer.
            lows = iter_band_lowpass(
                xf,
                self.k_list,
                self.exact_masks,
                self.spatial_dims,
                convolution_gemms,
                reuse_output=in_place,
                reuse_constants=reuse_constants,
            )
            for j, low in enumerate(lows):
                low = low.unflatten(1, (g, c // g))
                out = (
                    out.addcmul_(coefficients[:, j, :, None], low)
                    if in_place
                    else out.addcmul(coefficients[:, j, :, None], low)
                )
        return out.flatten(1, 2).to(x.dtype)
