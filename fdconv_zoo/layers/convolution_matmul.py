"""Matrix products as 1x1 convolutions: the same GEMM on the CPU's convolution library instead of its BLAS.

On the CPU, ``torch.matmul`` runs on the BLAS the wheel links (MKL on x86), convolutions on oneDNN's own
kernels, and for the tall-skinny products of the band split oneDNN is the faster one on large maps of an
AVX-512 CPU, the slower one on an AVX2 CPU (``benchmarks/bench_gemm_backend.py``). Both forms below read their
stacked operand as it lies, without copies: ``x @ m`` over the last axis is a 1x1 convolution of ``x``'s rows seen as channels-last positions, and
``m @ x`` over the second-to-last axis a 1x1 ``conv1d`` of each matrix of ``x`` as (channels, length).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["convolution_matmul"]


def convolution_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(a, b)`` for a stack of matrices and one matrix (on either side), as a 1x1 convolution;
    any other pair of operands is a plain ``torch.matmul``."""
    if b.dim() == 2 and a.dim() > 2:  # over the last axis: every row of a is one channels-last position
        lead, k = a.shape[:-1], a.shape[-1]
        y = F.conv2d(a.reshape(1, -1, 1, k).permute(0, 3, 1, 2), b.T[:, :, None, None])
        return y.permute(0, 2, 3, 1).reshape(*lead, b.shape[1])
    if a.dim() == 2 and b.dim() > 2:  # over the second-to-last axis: each matrix of b is (channels, length)
        lead = b.shape[:-2]
        return F.conv1d(b.reshape(-1, *b.shape[-2:]), a[:, :, None]).view(*lead, a.shape[0], b.shape[-1])
    return torch.matmul(a, b)
