"""KSM's global branch in the batched plan: the per-sample channel, filter, spatial and group activations.

Inference folds the batch norm, StarReLU and the temperatures into cached weights, so that all heads are one
matrix product; a training step runs the projection, a hand-written StarReLU and one matrix product for all
heads; compiled graphs compute the projection and the heads as two reductions (:mod:`.compiled_linear`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .compiled_linear import padded_concat, reduced_linear
from .constant_cache import constant, parameter_key
from .execution import ExecutionPlan

__all__ = ["GlobalAttentions", "global_attentions"]

_HEADS = ("channel_fc", "filter_fc", "spatial_fc", "kernel_fc")


class GlobalAttentions(NamedTuple):
    """Per-sample activations of the global branch (None where absent), without their constant factors."""

    channel: torch.Tensor | None  # (B, Cin)
    filter: torch.Tensor | None  # (B, Cout)
    spatial: torch.Tensor | None  # (B, prod(kernel_size))
    group: torch.Tensor | None  # (B, KN * P)


def _records_autograd(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _StarReLU(torch.autograd.Function):
    """``scale * relu(z) ** 2 + bias`` with a hand-written backward: four ops where autograd's composition of
    relu, square and addcmul records ten (this runs once per layer and training step). ``zero``, a cached
    scalar, lets one addcmul make ``2 * scale * grad * r``."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        r = F.relu(z)
        ctx.save_for_backward(r, scale, zero)
        return torch.addcmul(bias, r, r * scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        r, scale, zero = ctx.saved_tensors
        grad_r = grad * r
        grad_z = torch.addcmul(zero, grad_r, scale, value=2) if ctx.needs_input_grad[0] else None
        grad_scale = torch.dot(grad_r.flatten(), r.flatten()).view(1) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum().view(1) if ctx.needs_input_grad[2] else None
        return grad_z, grad_scale, grad_bias, None


def _head_scales(ksm: nn.Module) -> list[float]:
    """Per head logit: the inverse temperature, doubled for the tanh form (``1 + tanh(z) = 2 sigmoid(2 z)``)."""
    act_gain = 2.0 if ksm.act == "tanh" else 1.0
    scales = []
    for name in _HEADS:
        head = getattr(ksm, name, None)
        if head is not None:
            temp = ksm.kernel_temp if name == "kernel_fc" else ksm.temp
            scales += [act_gain / temp] * head.out_channels
    return scales


def _head_weights(
    ksm: nn.Module, concat: Callable[[list[torch.Tensor]], torch.Tensor] = torch.cat
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every head's 1x1 convolution as one (heads, A) matrix and bias, joined by ``concat``, the logit scales
    folded in."""
    heads = [getattr(ksm, n) for n in _HEADS if getattr(ksm, n, None) is not None]
    weight = concat([h.weight.flatten(1) for h in heads])
    bias = concat([h.bias for h in heads])
    scales = _head_scales(ksm)
    if all(s == 1.0 for s in scales):
        return weight, bias
    scale = torch.tensor(scales, dtype=weight.dtype, device=weight.device)
    return weight * scale[:, None], bias * scale


def _folded_global_weights(ksm: nn.Module) -> tuple[torch.Tensor, ...]:
    """Inference weights: the batch norm (running statistics) folded into the descriptor projection, StarReLU's
    scale and bias into the heads: ``heads(s relu(z)^2 + t) = (s W) relu(z)^2 + (b + t W 1)``."""
    bn = ksm.bn
    gain = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    fc_weight = ksm.fc.weight.flatten(1) * gain[:, None]
    fc_bias = bn.bias - bn.running_mean * gain
    weight, bias = _head_weights(ksm)
    return fc_weight, fc_bias, weight * ksm.relu.scale, bias + weight.sum(1) * ksm.relu.bias


def global_attentions(ksm: nn.Module, pooled: torch.Tensor, plan: ExecutionPlan) -> GlobalAttentions:
    """The global branch's activations: sigmoids of the (scaled) head logits, or the softmax group attention."""
    tensors = [p for p in ksm.parameters()] + [b for b in ksm.buffers() if b.is_floating_point()]
    bn = ksm.bn
    foldable = isinstance(bn, nn.modules.batchnorm._BatchNorm) and not bn.training and bn.running_var is not None
    if plan.fused_elementwise:
        # Compiled: the projection and all heads as two reductions (:mod:`.compiled_linear`), the heads' weights
        # joined by zero padding, with the batch norm, StarReLU, biases and temperatures inlined; no extern GEMM.
        h = ksm.relu(ksm._normalize(reduced_linear(pooled, ksm.fc.weight.flatten(1))))
        logits = reduced_linear(h, *_head_weights(ksm, concat=padded_concat))
    elif foldable and not _records_autograd(*tensors):
        reuse = plan.reuse_constants
        key = lambda: parameter_key(*tensors)  # noqa: E731
        fc_weight, fc_bias, weight, bias = constant(ksm, "folded", key, lambda: _folded_global_weights(ksm), reuse, 1)
        h = F.relu(torch.addmm(fc_bias, pooled, fc_weight.T)).square()
        logits = torch.addmm(bias, h, weight.T)
    else:
        z = ksm._normalize(pooled @ ksm.fc.weight.flatten(1).T)
        weight, bias = _head_weights(ksm)
        zero = constant(ksm, "zero", (z.dtype, z.device), lambda: z.new_zeros(()), plan.reuse_constants)
        logits = torch.addmm(bias, _StarReLU.apply(z, ksm.relu.scale, ksm.relu.bias, zero), weight.T)
    if ksm.act == "softmax":  # the official softmax form has only the group attention
        return GlobalAttentions(None, None, None, torch.softmax(logits, 1))
    present = [getattr(ksm, n, None) is not None for n in _HEADS]
    parts = iter(torch.sigmoid(logits).split([getattr(ksm, n).out_channels for n, p in zip(_HEADS, present) if p], 1))
    return GlobalAttentions(*(next(parts) if p else None for p in present))
