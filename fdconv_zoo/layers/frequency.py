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
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["FBM_MASK_GRID", "band_lowpass", "band_mask_factors", "band_masks", "frequency_group_map", "inverse_weight_spectrum", "radial_frequency"]

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


def band_mask_factors(height: int, width: int, cutoffs: Sequence[int], exact: bool = False) -> list[tuple[list[bool], list[bool]]]:
    """Row (``height``) and column (``width//2+1``) factors of each FBM low-pass mask: ``mask = rows x cols``.

    The official mask keeps the ``rfft2`` bins whose Chebyshev frequency ``max(|fh|, |fw|)`` is below
    ``0.5 / k + 1e-8`` (compared in float32: ``0.25 + 1e-8`` rounds to 0.25, smaller cut-offs keep the
    epsilon), which is the product of one test per axis. It is made on the official 64x64 grid and
    nearest-resized to the input size (separable too), so its checkpoints behave as trained; ``exact=True``
    tests the true frequencies of the input size instead, which moves band edges by up to one bin at sizes
    other than 64x64 and keeps the masks symmetric in +-f.
    """
    if exact:
        fh, fw = _fftfreq32(height, onesided=False), _fftfreq32(width, onesided=True)
    else:
        grid_h, grid_w = _fftfreq32(FBM_MASK_GRID[0], onesided=False), _fftfreq32(FBM_MASK_GRID[1], onesided=True)
        fh = [grid_h[i] for i in _nearest_source_index(height, len(grid_h))]
        fw = [grid_w[i] for i in _nearest_source_index(width // 2 + 1, len(grid_w))]
    factors = []
    for k in cutoffs:
        threshold = _float32(0.5 / k + 1e-8)
        factors.append(([abs(f) < threshold for f in fh], [abs(f) < threshold for f in fw]))
    return factors


def band_masks(height: int, width: int, cutoffs: Sequence[int], exact: bool = False, device: torch.device | None = None) -> torch.Tensor:
    """The FBM low-pass masks as float tensors (len(cutoffs), height, width//2+1); see ``band_mask_factors``."""
    factors = band_mask_factors(height, width, cutoffs, exact)
    rows = torch.tensor([r for r, _ in factors], dtype=torch.float32, device=device)
    cols = torch.tensor([c for _, c in factors], dtype=torch.float32, device=device)
    return rows[:, :, None] * cols[:, None, :]


def _dft_basis(n: int, frequencies: list[int], dtype: torch.dtype, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
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


def band_lowpass(x: torch.Tensor, cutoffs: Sequence[int], exact: bool = False) -> list[torch.Tensor]:
    """``irfft2(rfft2(x) * mask_k)`` over the last two axes of ``x`` for every cut-off, as matrix products.

    The masks are separable boxes that keep few frequencies (a quarter of the bins at most), so each band is a
    product of partial DFTs: analysis onto the kept frequencies of all bands (once), then a synthesis per
    band from its subset. This costs O(H + W) multiply-adds per element in a few GEMMs, several times less
    than four 2-D FFTs on the CPU at the feature sizes FBM runs on, and is plain ``matmul``: it differentiates,
    compiles and exports to ONNX. It reproduces torch's ``irfft2`` exactly in exact arithmetic, including its
    reading of only the real part of the zero and Nyquist columns when a resized mask is not symmetric.
    """
    h, w = x.shape[-2:]
    factors = band_mask_factors(h, w, cutoffs, exact)
    # Each band keeps the bins below its threshold on the same per-axis frequencies, so the kept sets are
    # nested: ordered by how many bands keep them, every band's frequencies are a prefix (a slice, no gather).
    rows, n_rows = _nested_order([r for r, _ in factors])
    cols, n_cols = _nested_order([c for _, c in factors])
    if not rows or not cols:  # every band empty (only for cut-offs below the grid resolution)
        return [torch.zeros_like(x) for _ in factors]
    cos_h, sin_h = _dft_basis(h, rows, x.dtype, x.device)
    cos_w, sin_w = _dft_basis(w, cols, x.dtype, x.device)
    # Real-signal synthesis weights along W: the zero and Nyquist columns count once, the others twice.
    weight_w = torch.tensor([1.0 if j == 0 or 2 * j == w else 2.0 for j in cols], dtype=x.dtype, device=x.device) / w
    analysed = torch.matmul(torch.cat([cos_h, sin_h], 1).T, torch.matmul(x, torch.cat([cos_w, sin_w], 1)))
    r, c = len(rows), len(cols)
    # Real and imaginary parts of the (H-complex) spectrum on the kept bins: (..., r, c) each.
    real = analysed[..., :r, :c] - analysed[..., r:, c:]
    imag = analysed[..., :r, c:] + analysed[..., r:, :c]
    lows = []
    for rk, ck in zip(n_rows, n_cols):
        if rk == 0 or ck == 0:
            lows.append(torch.zeros_like(x))
            continue
        re, im = real[..., :rk, :ck], imag[..., :rk, :ck]
        block = torch.cat([torch.cat([re, im], -1), torch.cat([im, -re], -1)], -2)  # (..., 2rk, 2ck)
        synth_h = torch.cat([cos_h[:, :rk], sin_h[:, :rk]], 1) / h  # (H, 2rk)
        wk = weight_w[:ck]
        synth_w = torch.cat([cos_w[:, :ck] * wk, sin_w[:, :ck] * wk], 1).T  # (2ck, W)
        lows.append(torch.matmul(synth_h, torch.matmul(block, synth_w)))
    return lows


def inverse_weight_spectrum(spectrum: torch.Tensor, cols: int) -> torch.Tensor:
    """``irfft2`` of a (..., rows, cols//2+1, 2) spectrum of (real, imag) pairs to (..., rows, cols).

    The inverse real FFT reads only the Hermitian part of column 0 (and of the Nyquist column when ``cols`` is
    even); those columns are symmetrised explicitly, in place (pass a tensor you own), so every FFT backend
    computes the same weight whatever it does with non-Hermitian input.
    """
    if _exporting():
        # torch.export / ONNX have no inverse real FFT: matrix products instead. They read only the real part of
        # the zero and Nyquist columns after the row transform, which the symmetrisation leaves unchanged.
        return _irfft2_matmul(spectrum, cols)
    rows = spectrum.shape[-3]
    neg = (-torch.arange(rows, device=spectrum.device)) % rows
    for c in (0, spectrum.shape[-2] - 1) if cols % 2 == 0 else (0,):
        column, mirrored = spectrum[..., :, c, :], spectrum[..., neg, c, :]
        spectrum[..., :, c, :] = torch.stack((column[..., 0] + mirrored[..., 0], column[..., 1] - mirrored[..., 1]), -1) * 0.5
    # torch.complex, not view_as_complex: the latter needs a unit last stride, which neither a channels_last
    # model's dft_weight nor inductor's buffers for this in-place symmetrisation have.
    return torch.fft.irfft2(torch.complex(spectrum[..., 0], spectrum[..., 1]), s=(rows, cols))


# ------------------------------------------------------------------ inverse weight transform under export
# torch.export/ONNX have no inverse real FFT, so under export the weight image is synthesised with matrix
# products instead: a complex inverse DFT along the rows, then the half-spectrum (C2R) inverse along the
# columns, each split as N = N1 * N2 (one Cooley-Tukey step, twiddles folded into the second stage), which
# costs O(N1 + N2) instead of O(N) multiply-adds per element (5.5 instead of 92 GMAC per image for
# ResNet-50). The matrices are built in float64 with numpy (never fake tensors, so the cache stays valid
# across exports) and become initialisers of the exported graph.
_DENSE_DFT_MAX = 64  # sizes up to this use one dense matrix


def _exporting() -> bool:
    """Whether a graph is being captured for ``torch.export``/``torch.onnx.export`` (both exporters)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return torch.onnx.is_in_onnx_export() or (is_exporting is not None and is_exporting())


def _dft_split(n: int) -> tuple[int, int] | None:
    """``n = n1 * n2`` with ``n2`` the largest divisor <= sqrt(n), or None where one dense matrix is as good."""
    if n <= _DENSE_DFT_MAX:
        return None
    n2 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return None if n2 < 4 else (n // n2, n2)


@functools.lru_cache(maxsize=64)
def _irfft2_matrices(rows: int, cols: int, dtype_name: str) -> tuple:
    """Read-only numpy matrices of ``_irfft2_matmul`` for one shape, built in float64 then cast."""
    import numpy as np

    def roots(n: int, a, b):  # cos and sin of 2 pi a b / n, the phase reduced exactly in integers
        phase = (np.outer(np.asarray(a, np.int64), np.asarray(b, np.int64)) % n) * (2 * math.pi / n)
        return np.cos(phase), np.sin(phase)

    def left(cos, sin):  # complex matrix acting from the left on [re; im] stacked along the contracted axis
        return np.block([[cos, -sin], [sin, cos]])

    n2 = cols // 2 + 1
    weight = np.full(n2, 2.0)  # C2R: the zero (and Nyquist) column counts once, the others twice
    weight[0] = 1.0
    if cols % 2 == 0:
        weight[-1] = 1.0
    out: list = []
    split = _dft_split(rows)
    if split is None:
        out.append(left(*roots(rows, range(rows), range(rows))) / rows)
    else:
        a, b = split  # r = r1 * b + r2, k = k1 + a * k2
        out.append(left(*roots(a, range(a), range(a))) / rows)
        # stage 2 for each k1: exp(2 pi i r2 (k1 + a k2) / rows), the twiddle folded in
        out.append(np.stack([left(*roots(rows, [k1 + a * k2 for k2 in range(b)], range(b))) for k1 in range(a)]))
    split = _dft_split(cols)
    if split is None:
        cos, sin = roots(cols, range(n2), range(cols))
        out.append(np.concatenate([cos * weight[:, None], -sin * weight[:, None]]) / cols)  # (2 n2, cols)
    else:
        a, b = split  # m = m1 * b + m2 (the spectrum zero-padded to m1 < m1_count), n = n1 + a * n2'
        m1_count = -(-n2 // b)
        cos, sin = roots(a, range(m1_count), range(a))
        out.append(np.block([[cos, sin], [-sin, cos]]) / cols)  # acts from the right on [re, im]
        out.append(weight)
        stage2 = []
        for n1 in range(a):
            cos, sin = roots(cols, range(b), [n1 + a * k for k in range(b)])
            stage2.append(np.concatenate([cos, -sin]))  # real part only: (2 b, b)
        out.append(np.stack(stage2))
    out = [np.ascontiguousarray(m, dtype=dtype_name) for m in out]
    for m in out:
        m.flags.writeable = False
    return tuple(out)


def _irfft2_matmul(spectrum: torch.Tensor, cols: int) -> torch.Tensor:
    """``torch.fft.irfft2(view_as_complex(spectrum), s=(rows, cols))`` for (..., rows, cols//2+1, 2) real
    spectra, as matrix products with fixed DFT matrices (exportable to ONNX; see the note above).

    Reads the zero and Nyquist columns as torch's CPU ``irfft2`` does: only their real parts after the
    inverse transform along the rows.
    """
    rows, n2 = spectrum.shape[-3], spectrum.shape[-2]
    if n2 != cols // 2 + 1 or spectrum.shape[-1] != 2:
        raise ValueError(f"expected a (..., rows, {cols // 2 + 1}, 2) spectrum for {cols} columns, got {tuple(spectrum.shape)}")
    dtype = spectrum.dtype
    np_dtype = {torch.float32: "float32", torch.float64: "float64"}.get(dtype, "float64")
    mats = [torch.from_numpy(m.copy()) for m in _irfft2_matrices(rows, cols, np_dtype)]  # fresh: constants under export
    if spectrum.device.type != "cpu" or mats[0].dtype != dtype:
        mats = [m.to(device=spectrum.device, dtype=dtype) for m in mats]
    lead = spectrum.shape[:-3]
    x = spectrum.reshape(-1, rows, n2, 2).permute(0, 3, 1, 2)  # (b, re/im, rows, n2)
    split = _dft_split(rows)
    if split is None:
        y = torch.matmul(mats.pop(0), x.reshape(-1, 2 * rows, n2))  # (b, 2 rows, n2)
    else:
        a, b = split
        t = torch.matmul(mats.pop(0), x.reshape(-1, 2 * a, b * n2))  # (b, re/im, k1, r2, n2)
        t = t.reshape(-1, 2, a, b, n2).transpose(1, 2).reshape(-1, a, 2 * b, n2)
        t = torch.matmul(mats.pop(0), t)  # (b, k1, re/im, k2, n2)
        y = t.reshape(-1, a, 2, b, n2).permute(0, 2, 3, 1, 4)  # row k = k1 + a k2
    y = y.reshape(-1, 2, rows, n2)
    split = _dft_split(cols)
    if split is None:
        out = torch.matmul(y.transpose(1, 2).reshape(-1, rows, 2 * n2), mats.pop(0))
    else:
        a, b = split
        m1_count = mats[0].shape[0] // 2
        y = F.pad(y * mats[1], (0, m1_count * b - n2))  # C2R weights, zero-padded to m1_count * b columns
        t = y.reshape(-1, 2, rows, m1_count, b).permute(0, 2, 4, 1, 3).reshape(-1, rows, b, 2 * m1_count)
        t = torch.matmul(t, mats[0])  # (b, rows, m2, re/im, n1)
        t = t.reshape(-1, rows, b, 2, a).permute(4, 0, 1, 3, 2).reshape(a, -1, 2 * b)
        t = torch.matmul(t, mats[2])  # (n1, b * rows, n2')
        out = t.reshape(a, -1, rows, b).permute(1, 2, 3, 0)  # column n = n1 + a n2'
    return out.reshape(*lead, rows, cols)
