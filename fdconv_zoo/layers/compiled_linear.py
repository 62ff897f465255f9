"""Linear maps written for compilers: one generated reduction kernel where a compiled graph would run GEMMs.

A small linear map on a (B, features) vector (KSM's descriptor projection and heads) compiles to an extern GEMM
whose bias and activation run as kernels of their own: one GEMM and at least one kernel per head. Written as a
product summed over the features, the compiler makes one reduction kernel of it, with the bias and the input's
own elementwise ops (batch norm, StarReLU) computed where they are read.
Several heads sharing an input become one such kernel when their weights are concatenated as a sum of
zero-padded tensors, which the compiler reads in place (CPU inductor lowers ``cat`` as one copy kernel per
input). Eager mode would materialise the product: only compiled graphs use these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["padded_concat", "reduced_linear"]


def reduced_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for (B, in) ``x`` and (out, in) ``weight`` as a product summed over ``in``."""
    out = (x[:, None, :] * weight).sum(-1)
    return out if bias is None else out + bias


def padded_concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors)`` along the first dimension as the sum of each tensor zero-padded to the total length."""
    total, offset, out = sum(t.shape[0] for t in tensors), 0, None
    for t in tensors:
        pads = (0, 0) * (t.dim() - 1) + (offset, total - offset - t.shape[0])
        padded = F.pad(t, pads)
        out = padded if out is None else out + padded
        offset += t.shape[0]
    return out
