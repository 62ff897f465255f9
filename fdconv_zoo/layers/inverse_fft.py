"""The inverse real 2-D FFT of a weight spectrum, in the form every backend and exporter agrees on.

Eager code uses ``torch.fft.irfft2`` after symmetrising the columns the inverse reads only half of.
torch.export/ONNX have no inverse real FFT, so under export the weight image is synthesised with matrix
products instead: a complex inverse DFT along the rows, then the half-spectrum (C2R) inverse along the columns,
each split as N = N1 * N2 (one Cooley-Tukey step), which costs O(N1 + N2) instead of O(N) multiply-adds per
element. The matrices are built in float64 with numpy (never fake tensors, so the cache stays valid across
exports) and become initialisers of the exported graph.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .execution import Workspace, into, is_exporting

__all__ = ["inverse_weight_planes", "inverse_weight_spectrum", "inverse_weight_spectrum_values", "irfft2_matmul"]

_DENSE_DFT_MAX = 64  # sizes up to this use one dense matrix


def inverse_weight_spectrum(
    spectrum: torch.Tensor, cols: int, *, exportable: bool | None = None, in_place: bool = False
) -> torch.Tensor:
    """``irfft2`` of a (..., rows, cols//2+1, 2) spectrum of (real, imag) pairs to (..., rows, cols); see
    ``inverse_weight_planes``."""
    return inverse_weight_planes(spectrum[..., 0], spectrum[..., 1], cols, exportable=exportable, in_place=in_place)


def inverse_weight_planes(
    real: torch.Tensor,
    imag: torch.Tensor,
    cols: int,
    workspace: Workspace | None = None,
    *,
    exportable: bool | None = None,
    in_place: bool = False,
    reads_hermitian_part: bool = False,
) -> torch.Tensor:
    """``irfft2`` of the (..., rows, cols//2+1) spectrum ``real + i imag`` to (..., rows, cols).

    The inverse real FFT reads only the Hermitian part of column 0 (and of the Nyquist column when ``cols`` is
    even); those columns are symmetrised explicitly so every FFT backend computes the same weight whatever it
    does with non-Hermitian input, unless ``reads_hermitian_part`` says the backend does exactly that itself
    (the CPU's: with MKL, equal to rounding, gradients included). ``in_place`` writes them into the
    planes (pass tensors you own); out of place under autograd, where an in-place write would make backward
    clone and zero-fill both planes per column. ``exportable`` uses the matrix form (default: while exporting).
    """
    if exportable is None:
        exportable = is_exporting()
    if exportable:
        # The matrix form reads only the real part of the zero and Nyquist columns after the row transform,
        # which the symmetrisation leaves unchanged.
        return irfft2_matmul(real, imag, cols)
    if not reads_hermitian_part:
        real, imag = _symmetrise_edge_columns(real, imag, cols, in_place)
    # torch.complex, not view_as_complex: the latter needs interleaved pairs with a unit last stride, which
    # neither a channels_last model's dft_weight nor inductor's buffers for this in-place symmetrisation have.
    return inverse_weight_spectrum_values(into(workspace, "spectrum", torch.complex, real, imag), cols, workspace)


def _symmetrise_edge_columns(
    real: torch.Tensor, imag: torch.Tensor, cols: int, in_place: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The planes with column 0 (and the Nyquist column of an even ``cols``) replaced by their Hermitian part,
    written into the planes ``in_place``, else assembled into new ones."""
    rows, n2 = real.shape[-2:]
    neg = (-torch.arange(rows, device=real.device)) % rows
    edges = (0, n2 - 1) if cols % 2 == 0 and n2 > 1 else (0,)
    hermitian = {
        c: ((real[..., :, c] + real[..., neg, c]) * 0.5, (imag[..., :, c] - imag[..., neg, c]) * 0.5) for c in edges
    }
    if in_place:
        for c, (re, im) in hermitian.items():
            real[..., :, c], imag[..., :, c] = re, im
        return real, imag

    def assemble(plane: torch.Tensor, part: int) -> torch.Tensor:
        pieces = [hermitian[0][part][..., None], plane[..., 1 : n2 - len(edges) + 1]]
        return torch.cat(pieces + ([hermitian[n2 - 1][part][..., None]] if len(edges) == 2 else []), -1)

    return assemble(real, 0), assemble(imag, 1)


def inverse_weight_spectrum_values(values: torch.Tensor, cols: int, workspace: Workspace | None = None) -> torch.Tensor:
    """``irfft2`` of a complex (..., rows, cols//2+1) spectrum, for backends that read only the Hermitian part
    of its edge columns themselves (the CPU's; see :func:`inverse_weight_planes`)."""
    return into(workspace, "image", torch.fft.irfft2, values, s=(values.shape[-2], cols))


def _dft_split(n: int) -> tuple[int, int] | None:
    """``n = n1 * n2`` with ``n2`` the largest divisor <= sqrt(n), or None where one dense matrix is as good."""
    if n <= _DENSE_DFT_MAX:
        return None
    n2 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return None if n2 < 4 else (n // n2, n2)


@functools.lru_cache(maxsize=64)
def _irfft2_matrices(rows: int, cols: int, dtype_name: str) -> tuple[tuple, tuple]:
    """Read-only numpy matrices of ``irfft2_matmul`` for one shape (rows stage, columns stage), built in
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
        row_mats = (
            *(m / rows for m in roots(a, range(a), range(a))),
            np.stack([c for c, _ in stage2]),
            np.stack([s for _, s in stage2]),
        )
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
        col_mats = (
            weight,
            *roots(a, range(a), range(-(-n2 // b))),
            *roots(cols, range(a), range(b)),
            *roots(b, range(b), range(b)),
        )
    out = tuple(tuple(np.ascontiguousarray(m, dtype=dtype_name) for m in mats) for mats in (row_mats, col_mats))
    for mats in out:
        for m in mats:
            m.flags.writeable = False
    return out


def _complex_matmul(
    m_re: torch.Tensor, m_im: torch.Tensor, x_re: torch.Tensor, x_im: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(m_re + i m_im) @ (x_re + i x_im) as real and imaginary parts."""
    return m_re @ x_re - m_im @ x_im, m_re @ x_im + m_im @ x_re


def irfft2_matmul(real: torch.Tensor, imag: torch.Tensor, cols: int) -> torch.Tensor:
    """``torch.fft.irfft2(complex(real, imag), s=(rows, cols))`` for (..., rows, cols//2+1) spectra, as matrix
    products with fixed DFT matrices (exportable; see the note above).

    Reads the zero and Nyquist columns as torch's CPU ``irfft2`` does: only their real parts after the
    inverse transform along the rows. Every contraction is a matmul over the last or second-to-last axis
    and every reordering swaps one axis pair: onnxruntime's general transpose is several times slower.
    """
    rows, n2 = real.shape[-2:]
    if n2 != cols // 2 + 1 or imag.shape != real.shape:
        raise ValueError(
            f"expected (..., rows, {cols // 2 + 1}) spectra for {cols} columns, got {tuple(real.shape)} and {tuple(imag.shape)}"
        )
    dtype = real.dtype
    np_dtype = {torch.float32: "float32", torch.float64: "float64"}.get(dtype, "float64")
    # Fresh tensors from numpy: under export they become constants (a cached tensor would be a fake one).
    row_mats, col_mats = ([torch.from_numpy(m.copy()) for m in mats] for mats in _irfft2_matrices(rows, cols, np_dtype))
    if real.device.type != "cpu" or row_mats[0].dtype != dtype:
        row_mats, col_mats = ([m.to(device=real.device, dtype=dtype) for m in mats] for mats in (row_mats, col_mats))
    lead = real.shape[:-2]
    batch = math.prod(lead)  # explicit sizes, never -1: an empty batch must reshape too
    re, im = real.reshape(batch, rows, n2), imag.reshape(batch, rows, n2)
    row_split = _dft_split(rows)
    if row_split is None:
        re, im = _complex_matmul(*row_mats, re, im)
    else:
        a, b = row_split
        f_re, f_im, g_re, g_im = row_mats
        re, im = _complex_matmul(
            f_re, f_im, re.reshape(batch, a, b * n2), im.reshape(batch, a, b * n2)
        )  # (batch, k1, r2 * n2)
        re, im = _complex_matmul(
            g_re, g_im, re.reshape(batch, a, b, n2), im.reshape(batch, a, b, n2)
        )  # (batch, k1, k2, n2)
        re, im = re.reshape(batch, rows, n2), im.reshape(batch, rows, n2)  # rows in (k1, k2) order, sorted at the end
    col_split = _dft_split(cols)
    if col_split is None:
        out = re @ col_mats[0] - im @ col_mats[1]
    else:
        a, b = col_split
        weight, e_re, e_im, t_re, t_im, d_cos, d_sin = col_mats
        padded = e_re.shape[-1] * b
        re = F.pad(re * weight, (0, padded - n2)).reshape(batch, rows, padded // b, b)  # (batch, rows, m1, m2)
        im = F.pad(im * weight, (0, padded - n2)).reshape(batch, rows, padded // b, b)
        re, im = _complex_matmul(e_re, e_im, re, im)  # (batch, rows, n1, m2)
        re, im = re * t_re - im * t_im, re * t_im + im * t_re  # twiddles
        out = (re @ d_cos - im @ d_sin).transpose(-1, -2).reshape(batch, rows, cols)  # real part; column n1 + a n2'
    if row_split is not None:
        a, b = row_split
        out = out.reshape(batch, a, b, cols).transpose(1, 2)  # row k1 + a k2
    return out.reshape(*lead, rows, cols)
