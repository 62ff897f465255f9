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
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "FBM_MASK_GRID", "band_lowpass", "band_mask_factors", "band_masks", "frequency_group_map", "into", "inverse_weight_planes",
    "inverse_weight_spectrum", "is_exporting", "radial_frequency",
]

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

    Symmetrises the zero and Nyquist columns of ``spectrum`` in place (pass a tensor you own); see
    ``inverse_weight_planes``.
    """
    return inverse_weight_planes(spectrum[..., 0], spectrum[..., 1], cols)


def into(workspace: dict[str, torch.Tensor] | None, name: str, fn: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
    """``fn(*args, **kwargs)``, written into ``workspace[name]`` (``out=``) when an earlier call left a buffer there.

    Per-sample loops without autograd reuse their weight-sized buffers this way: glibc hands freed blocks of a
    few MB back to the OS, and faulting fresh pages in again can cost as much as the arithmetic (2x at 512
    channels).
    """
    if workspace is None:
        return fn(*args, **kwargs)
    buffer = workspace.get(name)
    workspace[name] = out = fn(*args, **kwargs) if buffer is None else fn(*args, **kwargs, out=buffer)
    return out


def inverse_weight_planes(real: torch.Tensor, imag: torch.Tensor, cols: int, workspace: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``irfft2`` of the (..., rows, cols//2+1) spectrum ``real + i imag`` to (..., rows, cols).

    The inverse real FFT reads only the Hermitian part of column 0 (and of the Nyquist column when ``cols`` is
    even); those columns are symmetrised explicitly, in place (pass tensors you own), so every FFT backend
    computes the same weight whatever it does with non-Hermitian input.
    """
    if is_exporting():
        # torch.export / ONNX have no inverse real FFT: matrix products instead. They read only the real part of
        # the zero and Nyquist columns after the row transform, which the symmetrisation leaves unchanged.
        return _irfft2_matmul(real, imag, cols)
    rows, n2 = real.shape[-2:]
    neg = (-torch.arange(rows, device=real.device)) % rows
    edges = (0, n2 - 1) if cols % 2 == 0 and n2 > 1 else (0,)
    hermitian = {c: ((real[..., :, c] + real[..., neg, c]) * 0.5, (imag[..., :, c] - imag[..., neg, c]) * 0.5) for c in edges}
    if torch.is_grad_enabled() and (real.requires_grad or imag.requires_grad):
        # Out of place: an in-place write would make backward clone and zero-fill both planes per column.
        def assemble(plane: torch.Tensor, part: int) -> torch.Tensor:
            pieces = [hermitian[0][part][..., None], plane[..., 1 : n2 - len(edges) + 1]]
            return torch.cat(pieces + ([hermitian[n2 - 1][part][..., None]] if len(edges) == 2 else []), -1)

        real, imag = assemble(real, 0), assemble(imag, 1)
    else:
        for c, (re, im) in hermitian.items():
            real[..., :, c], imag[..., :, c] = re, im
    # torch.complex, not view_as_complex: the latter needs interleaved pairs with a unit last stride, which
    # neither a channels_last model's dft_weight nor inductor's buffers for this in-place symmetrisation have.
    return into(workspace, "image", torch.fft.irfft2, into(workspace, "spectrum", torch.complex, real, imag), s=(rows, cols))


# ------------------------------------------------------------------ inverse weight transform under export
# torch.export/ONNX have no inverse real FFT, so under export the weight image is synthesised with matrix
# products instead: a complex inverse DFT along the rows, then the half-spectrum (C2R) inverse along the
# columns, each split as N = N1 * N2 (one Cooley-Tukey step), which costs O(N1 + N2) instead of O(N)
# multiply-adds per element (5.5 instead of 92 GMAC per image for ResNet-50). The matrices are built in
# float64 with numpy (never fake tensors, so the cache stays valid across exports) and become initialisers
# of the exported graph.
_DENSE_DFT_MAX = 64  # sizes up to this use one dense matrix


def is_exporting() -> bool:
    """True while ``torch.onnx.export`` (either exporter) or ``torch.export`` traces the model."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def _dft_split(n: int) -> tuple[int, int] | None:
    """``n = n1 * n2`` with ``n2`` the largest divisor <= sqrt(n), or None where one dense matrix is as good."""
    if n <= _DENSE_DFT_MAX:
        return None
    n2 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return None if n2 < 4 else (n // n2, n2)


@functools.lru_cache(maxsize=64)
def _irfft2_matrices(rows: int, cols: int, dtype_name: str) -> tuple[tuple, tuple]:
    """Read-only numpy matrices of ``_irfft2_matmul`` for one shape (rows stage, columns stage), built in
    float64 then cast. Complex matrices come as (real, imaginary) pairs."""
    import numpy as np

    def roots(n: int, a, b):  # cos and sin of 2 pi a b / n, the phase reduced exactly in integers
        phase = (np.outer(np.asarray(a, np.int64), np.asarray(b, np.int64)) % n) * (2 * math.pi / n)
        return np.cos(phase), np.sin(phase)

    split = _dft_split(rows)
    if split is None:
        row_mats = tuple(m / rows for m in roots(rows, range(rows), range(rows)))
    else:
        a, b = split  # r = r1 * b + r2, k = k1 + a * k2
        stage2 = [roots(rows, [k1 + a * k2 for k2 in range(b)], range(b)) for k1 in range(a)]  # twiddles folded in
        row_mats = (*(m / rows for m in roots(a, range(a), range(a))), np.stack([c for c, _ in stage2]), np.stack([s for _, s in stage2]))
    n2 = cols // 2 + 1
    weight = np.full(n2, 2.0 / cols)  # C2R: the zero (and Nyquist) column counts once, the others twice
    weight[0] = 1.0 / cols
    if cols % 2 == 0:
        weight[-1] = 1.0 / cols
    split = _dft_split(cols)
    if split is None:
        col_mats = tuple(m * weight[:, None] for m in roots(cols, range(n2), range(cols)))  # (n2, cols)
    else:
        a, b = split  # m = m1 * b + m2 (zero-padded to m1 < ceil(n2 / b)), n = n1 + a * n2'
        col_mats = (weight, *roots(a, range(a), range(-(-n2 // b))), *roots(cols, range(a), range(b)), *roots(b, range(b), range(b)))
    out = tuple(tuple(np.ascontiguousarray(m, dtype=dtype_name) for m in mats) for mats in (row_mats, col_mats))
    for mats in out:
        for m in mats:
            m.flags.writeable = False
    return out


def _complex_matmul(m_re: torch.Tensor, m_im: torch.Tensor, x_re: torch.Tensor, x_im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m_re + i m_im) @ (x_re + i x_im) as real and imaginary parts."""
    return m_re @ x_re - m_im @ x_im, m_re @ x_im + m_im @ x_re


def _irfft2_matmul(real: torch.Tensor, imag: torch.Tensor, cols: int) -> torch.Tensor:
    """``torch.fft.irfft2(complex(real, imag), s=(rows, cols))`` for (..., rows, cols//2+1) spectra, as matrix
    products with fixed DFT matrices (exportable; see the note above).

    Reads the zero and Nyquist columns as torch's CPU ``irfft2`` does: only their real parts after the
    inverse transform along the rows. Every contraction is a matmul over the last or second-to-last axis
    and every reordering swaps one axis pair: onnxruntime's general transpose is several times slower.
    """
    rows, n2 = real.shape[-2:]
    if n2 != cols // 2 + 1 or imag.shape != real.shape:
        raise ValueError(f"expected (..., rows, {cols // 2 + 1}) spectra for {cols} columns, got {tuple(real.shape)} and {tuple(imag.shape)}")
    dtype = real.dtype
    np_dtype = {torch.float32: "float32", torch.float64: "float64"}.get(dtype, "float64")
    # Fresh tensors from numpy: under export they become constants (a cached tensor would be a fake one).
    row_mats, col_mats = ([torch.from_numpy(m.copy()) for m in mats] for mats in _irfft2_matrices(rows, cols, np_dtype))
    if real.device.type != "cpu" or row_mats[0].dtype != dtype:
        row_mats, col_mats = ([m.to(device=real.device, dtype=dtype) for m in mats] for mats in (row_mats, col_mats))
    lead = real.shape[:-2]
    re, im = real.reshape(-1, rows, n2), imag.reshape(-1, rows, n2)
    row_split = _dft_split(rows)
    if row_split is None:
        re, im = _complex_matmul(*row_mats, re, im)
    else:
        a, b = row_split
        f_re, f_im, g_re, g_im = row_mats
        re, im = _complex_matmul(f_re, f_im, re.reshape(-1, a, b * n2), im.reshape(-1, a, b * n2))  # (batch, k1, r2 * n2)
        re, im = _complex_matmul(g_re, g_im, re.reshape(-1, a, b, n2), im.reshape(-1, a, b, n2))  # (batch, k1, k2, n2)
        re, im = re.reshape(-1, rows, n2), im.reshape(-1, rows, n2)  # rows in (k1, k2) order, sorted at the end
    col_split = _dft_split(cols)
    if col_split is None:
        out = re @ col_mats[0] - im @ col_mats[1]
    else:
        a, b = col_split
        weight, e_re, e_im, t_re, t_im, d_cos, d_sin = col_mats
        padded = e_re.shape[-1] * b
        re = F.pad(re * weight, (0, padded - n2)).reshape(-1, rows, padded // b, b)  # (batch, rows, m1, m2)
        im = F.pad(im * weight, (0, padded - n2)).reshape(-1, rows, padded // b, b)
        re, im = _complex_matmul(e_re, e_im, re, im)  # (batch, rows, n1, m2)
        re, im = re * t_re - im * t_im, re * t_im + im * t_re  # twiddles
        out = (re @ d_cos - im @ d_sin).transpose(-1, -2).reshape(-1, rows, cols)  # real part; column n1 + a n2'
    if row_split is not None:
        a, b = row_split
        out = out.reshape(-1, a, b, cols).transpose(1, 2)  # row k1 + a k2
    return out.reshape(*lead, rows, cols)
