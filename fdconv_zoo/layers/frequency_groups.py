"""The disjoint frequency groups of Fourier Disjoint Weights: which group every weight-spectrum bin belongs to.

The grouping depends only on shapes, so it is computed once per shape on the CPU and cached. It reproduces the
official layer bit for bit: bins are ordered by their float32 radial frequency, computed with the rounding of
torch's vectorised ``torch.norm`` (FMA semantics, emulated exactly in float64 so the result does not depend on the
CPU's SIMD level), and sorted with torch's CPU sort, whose tie order decides most group boundaries.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["frequency_group_map", "radial_frequency"]


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
