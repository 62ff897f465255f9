"""FDConv's forward in a fixed handful of batched ops: the plan of accelerators and compiled graphs.

On a GPU an eager forward costs about one kernel launch per op, whatever the op's size, so here every step runs
once for the whole batch: one pooled descriptor; one matrix product for all attention heads (in inference with
the batch norm, StarReLU and temperatures folded into cached weights); one gather of the group attentions onto
the spectrum's bins and one product; one inverse FFT along the rows, one product that keeps the real part of the
edge columns (what the CPU's inverse real FFT reads of a non-Hermitian spectrum, made explicit so every FFT
backend agrees) and one inverse real FFT along the columns; the local and separable attentions in three
products, the last of which writes the kernel in the convolution's layout; one grouped convolution. Constants
(index maps, masks, matrices) and, without autograd, parameter-derived values are kept per layer
(:mod:`.constant_cache`); traced graphs build them in the graph, where they become constants. No op depends on
tensor values (no host syncs).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention_products import layout_keeping_product, outer_product, scale_rows
from .batched_attentions import GlobalAttentions, global_attentions
from .constant_cache import constant
from .execution import ExecutionPlan, float32_region
from .per_sample_conv import feature_view, per_sample_conv

if TYPE_CHECKING:
    from .fdconv import FDConv

__all__ = ["batched_forward"]


def _gain(layer: FDConv, att: GlobalAttentions, local: bool) -> float:
    """The constant factors of every attention, multiplied into one scalar on the spectrum: ``alpha``, ``2 / KN``
    of the group sigmoid (``1 / KN`` for a single group, 1 for the softmax), the channel, filter and spatial
    attentions' ``att_multi`` (2 for tanh), the local attention's."""
    ksm = layer.KSM_Global
    act_gain = layer.att_multi if ksm.act == "sigmoid" else 2.0
    groups = ksm.kernel_num
    gain = layer.alpha * (1.0 if ksm.act == "softmax" else (2.0 if att.group is not None else 1.0) / groups)
    gain *= act_gain ** sum(t is not None for t in att[:3])
    if local:
        gain *= layer.att_multi if layer.ksm_local_act == "sigmoid" else 2.0
    return gain


def _local_weight(local: nn.Module, act: str) -> torch.Tensor:
    return local.conv.weight * 2 if act == "tanh" else local.conv.weight


@torch.compiler.assume_constant_result
def _edge_mask(n2: int, cols: int, gain: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n2, 2) factors ``gain`` on the (real, imag) parts after the inverse along the rows, zero for the imaginary parts
    of the zero column and of an even ``cols``' Nyquist column, which the inverse real FFT must not read (torch's
    CPU inverse ignores them; other backends need not)."""
    mask = [[gain, gain] for _ in range(n2)]
    for c in {0, n2 - 1} if cols % 2 == 0 else {0}:
        mask[c][1] = 0.0
    return torch.tensor(mask, dtype=dtype, device=device)


@torch.compiler.assume_constant_result
def _hermitian_factors(
    n2: int, cols: int, gain: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n2, 2) factors on a spectrum's (re, im) pairs and on its row-mirrored pairs (row ``-r``) whose sum is
    ``gain`` times the spectrum with its edge columns (zero, and Nyquist of an even ``cols``) replaced by their
    Hermitian part ``(D[r] + conj(D[-r])) / 2``: the part every inverse real FFT agrees on."""
    edges = {0, n2 - 1} if cols % 2 == 0 else {0}
    keep = [[gain / 2, gain / 2] if c in edges else [gain, gain] for c in range(n2)]
    mirrored = [[gain / 2, -gain / 2] if c in edges else [0.0, 0.0] for c in range(n2)]
    return torch.tensor(keep, dtype=dtype, device=device), torch.tensor(mirrored, dtype=dtype, device=device)


def _adjoint_factors(n2: int, cols: int, gain: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n2, 2) factors of the weight image's adjoint on the (re, im) pairs of ``rfft(grad)``: ``gain``, twice for
    the columns whose mirror the one-sided spectrum leaves out, and zero for the edges' imaginary parts."""
    factors = [[gain * 2, gain * 2] if 0 < c <= cols - n2 else [gain, gain] for c in range(n2)]
    for c in {0, n2 - 1} if cols % 2 == 0 else {0}:
        factors[c][1] = 0.0
    return torch.tensor(factors, dtype=dtype, device=device)


class _WeightImage(torch.autograd.Function):
    """(B, rows, cols) weight images from the (P, rows, n2, 2) spectrum pairs and the (B, P * KN) group
    attentions: ``gain`` times each bin's attention (one gather, one addcmul onto the cached ``zero``), the inverse
    FFT along the rows, the edge columns' imaginary parts zeroed (what the CPU's inverse real FFT ignores, made
    explicit so every backend agrees), the inverse real FFT along the columns. The backward is the adjoint in
    one product with constant factors (the columns' doubling, the edges and ``gain`` at once): eight ops where
    autograd's backward of the forward's ops runs eleven."""

    @staticmethod
    def forward(ctx, pairs, group, index, gain: float, cols: int, zero, adjoint):  # noqa: ANN001, ANN205
        per_bin = group.view(group.shape[0], pairs.shape[0], -1)[:, :, index]  # (B, P, rows, n2)
        scaled = torch.addcmul(zero, pairs, per_bin[..., None], value=gain)
        scaled = scaled.squeeze(1) if pairs.shape[0] == 1 else scaled.sum(1)
        halves = torch.view_as_real(torch.fft.ifft(torch.view_as_complex(scaled.contiguous()), dim=-2))
        n2 = halves.shape[-2]
        halves[..., :: max(n2 - 1, 1) if cols % 2 == 0 else n2, 1].zero_()
        ctx.save_for_backward(pairs, per_bin, index, zero, adjoint)
        ctx.groups = group.shape[1] // pairs.shape[0]
        return torch.fft.irfft(torch.view_as_complex(halves), n=cols, dim=-1)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        pairs, per_bin, index, zero, adjoint = ctx.saved_tensors
        spectrum = torch.view_as_real(torch.fft.rfft(grad, dim=-1, norm="forward"))
        rows = torch.view_as_real(torch.fft.fft(torch.view_as_complex(spectrum * adjoint), dim=-2, norm="forward"))
        rows = rows[:, None]  # (B, 1, rows, n2, 2): the gradient of every P
        grad_pairs = grad_group = None
        if ctx.needs_input_grad[0]:
            grad_pairs = (rows * per_bin[..., None]).sum(0)
        if ctx.needs_input_grad[1]:
            grad_bins = (rows * pairs).sum(-1).flatten(2)  # (B, P, bins)
            # Onto the cached zero, broadcast: one op where new_zeros and an in-place index_add_ are two.
            grad_group = zero.expand(*grad_bins.shape[:2], ctx.groups).index_add(2, index.flatten(), grad_bins)
            grad_group = grad_group.flatten(1)
        return grad_pairs, grad_group, None, None, None, None, None


def _weight_image(layer: FDConv, group: torch.Tensor | None, gain: float, plan: ExecutionPlan) -> torch.Tensor:
    """(B or 1, rows, cols) weight images: the spectrum's bins times ``gain`` and their group's attention.

    The parameter is read as a complex view (no copy); ``gain`` rides on the constant edge factors, or without
    autograd on the group attention's product."""
    dft = layer.dft_weight
    dtype = torch.float64 if dft.dtype == torch.float64 else torch.float32
    cols = layer.weight_image_shape[1]
    pairs = dft.to(dtype)  # (P, rows, n2, 2) real and imaginary parts: real products, no complex kernels
    if group is not None and not plan.fused_elementwise:
        reuse = plan.reuse_constants
        zero = constant(layer, "zero", (dtype, dft.device), lambda: pairs.new_zeros(()), reuse)
        key = (pairs.shape[-2], cols, gain, dtype, dft.device)
        adjoint = constant(layer, "adjoint", key, lambda: _adjoint_factors(*key), reuse)
        return _WeightImage.apply(pairs, group.to(dtype), layer.frequency_group, gain, cols, zero, adjoint)
    if group is None:
        pairs = pairs.sum(0, keepdim=True)
    else:
        # The group attention of every bin: one gather with the (rows, n2) int32 group map, one product.
        per_bin = group.to(dtype).view(group.shape[0], layer.param_ratio, -1)[:, :, layer.frequency_group]
        pairs = pairs * per_bin[..., None]  # (B, P, rows, n2, 2)
        pairs = pairs.squeeze(1) if layer.param_ratio == 1 else pairs.sum(1)
    n2 = pairs.shape[-2]
    if plan.fused_elementwise:  # symmetrised in the gather's kernel, then one inverse FFT
        keep, mirrored = _hermitian_factors(n2, cols, gain, dtype, dft.device)
        mirror = pairs.flip(-3).roll(1, -3)  # row -r at row r: an index map the compiler fuses, not a kernel
        pairs = pairs * keep + mirror * mirrored
        return torch.fft.irfft2(torch.view_as_complex(pairs.contiguous()), s=(pairs.shape[-3], cols))
    spectrum = torch.view_as_complex(pairs if pairs.is_contiguous() else pairs.contiguous())
    halves = torch.view_as_real(torch.fft.ifft(spectrum, dim=-2))
    key = (n2, cols, gain, dtype, dft.device)
    edge = constant(layer, "edge", key, lambda: _edge_mask(*key), plan.reuse_constants)
    halves = halves.mul_(edge) if plan.in_place else halves * edge
    return torch.fft.irfft(torch.view_as_complex(halves), n=cols, dim=-1)


def _modulated_weight(
    layer: FDConv, pooled: torch.Tensor, att: GlobalAttentions, on_weight: tuple[bool, bool], plan: ExecutionPlan
) -> torch.Tensor:
    """Per-sample kernels (B, Cout, Cin, k1, c) in the convolution's memory layout (c = k2*...*kn)."""
    b = pooled.shape[0]
    k, c = layer.kernel_size[0], math.prod(layer.kernel_size[1:])
    cout, cin = layer.out_channels, layer.in_channels
    local = getattr(layer, "KSM_Local", None)
    (channel_on_weight, filter_on_weight), backward_products = on_weight, _backward_products(plan)
    image = _weight_image(layer, att.group, _gain(layer, att, local is not None), plan)
    image = image.view(-1, cout, k, cin, c).permute(0, 1, 3, 2, 4)  # logical (B, Cout, Cin, k1, c)
    weight = image
    if local is not None:
        conv, norm = local.conv, local.norm
        z = F.layer_norm(pooled.to(conv.weight.dtype), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        taps = _local_weight(local, layer.ksm_local_act)
        if plan.fused_elementwise:  # the taps' sums, fused by the compiler into the kernel that uses them
            windows = F.pad(z, (conv.padding[0], conv.padding[0])).unfold(1, taps.shape[-1], 1)  # (B, Cin, taps)
            logits = (windows[:, None] * taps.view(1, -1, 1, taps.shape[-1])).sum(-1)
        else:
            logits = F.conv1d(z[:, None], taps, None, 1, conv.padding)
        sig = (logits.sigmoid_() if plan.in_place else torch.sigmoid(logits)).view(b, cout, k, c, cin)
        sig = sig.permute(0, 1, 4, 2, 3)
        own_layouts = backward_products and image.shape == sig.shape and c > 1  # else one layout: autograd's
        weight = layout_keeping_product(sig, image) if own_layouts else sig * image  # no gradient copied back
    taps = None
    if att.spatial is not None:
        taps = att.spatial.view(b, 1, 1, k, c)
    if att.channel is not None and channel_on_weight:
        channel = att.channel.view(b, 1, cin, 1, 1)
        if taps is None:
            taps = channel
        elif backward_products:
            taps = outer_product(att.channel, att.spatial).view(b, 1, cin, k, c)
        else:
            taps = taps * channel
    if plan.fused_elementwise:  # made in the channels-last order (Cin last) in which compilers convolve
        weight, taps = weight.permute(0, 1, 3, 4, 2), None if taps is None else taps.permute(0, 1, 3, 4, 2)
    # The tap factor goes first: its (Cin, k1, c) strides make the product's memory layout the convolution's.
    weight = taps * weight if taps is not None else weight.contiguous()
    if att.filter is not None and filter_on_weight:
        if backward_products and weight.shape[0] == b:
            weight = scale_rows(weight, att.filter)
        else:
            factor = att.filter.view(b, cout, 1, 1, 1)
            weight = weight.mul_(factor) if plan.in_place and weight.shape[0] == b else weight * factor
    weight = weight.contiguous().permute(0, 1, 4, 2, 3) if plan.fused_elementwise else weight  # logical order again
    return weight.expand(b, -1, -1, -1, -1)


class _PositionMean(torch.autograd.Function):
    """``x.mean(dims)`` whose backward hands the input an expanded view of the pooled gradient divided by the
    count: one small kernel where ``mean``'s backward writes an input-sized tensor (and the gradient's
    accumulation then reads it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:  # noqa: ANN001
        ctx.shape, ctx.dims = x.shape, dims
        return x.mean(dims)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        count = math.prod(ctx.shape[d] for d in ctx.dims)
        scaled = grad / count
        for d in ctx.dims:
            scaled = scaled.unsqueeze(d)
        return scaled.expand(ctx.shape), None


def _backward_products(plan: ExecutionPlan) -> bool:
    """Whether attention products take :mod:`.attention_products`' backward (eager steps recording autograd)."""
    return not plan.in_place and not plan.fused_elementwise


def _dynamic_conv(
    layer: FDConv,
    x: torch.Tensor,
    pooled: torch.Tensor,
    att: GlobalAttentions,
    bias: torch.Tensor | None,
    plan: ExecutionPlan,
) -> torch.Tensor:
    """The per-sample kernels and the convolution (a function of its own, so backward can recompute it)."""
    filter_on_weight = plan.fold_attention or att.filter is None
    # Eager plans merge the channel attention into the spatial one on the weight; compiled graphs keep it on the
    # input, where it fuses into the kernel that makes it (see ``plan_execution``).
    merged = att.spatial is not None and not plan.fused_elementwise
    channel_on_weight = plan.fold_attention or att.channel is None or merged
    with float32_region(x.device.type, plan.exporting):
        weight = _modulated_weight(layer, pooled, att, (channel_on_weight, filter_on_weight), plan)
    if not plan.float32_attention:  # under autocast the convolution itself casts the float32 weight
        weight = weight.to(x.dtype)
    by_rows = _backward_products(plan) and not layer.token_layout
    if not channel_on_weight:
        channel = att.channel.to(x.dtype)
        x = scale_rows(x, channel) if by_rows else x * feature_view(channel, layer.token_layout, layer.spatial_dims)
    # The kernel's logical image layout (B, Cout, k1, Cin, c), whose permutation back to the memory is a view.
    y = per_sample_conv(x, weight.transpose(2, 3), layer, plan.method, bias=bias if filter_on_weight else None)
    if filter_on_weight:
        return y
    if bias is None and by_rows:
        return scale_rows(y, att.filter.to(y.dtype))
    factor = feature_view(att.filter, layer.token_layout, layer.spatial_dims).to(y.dtype)
    if bias is None:
        return y.mul_(factor) if plan.in_place else y * factor
    bias = bias if layer.token_layout else feature_view(bias, False, layer.spatial_dims)
    return torch.addcmul(bias.to(y.dtype), y, factor)


def batched_forward(layer: FDConv, x: torch.Tensor, plan: ExecutionPlan) -> torch.Tensor:
    """``layer(x)`` for a non-empty batch, every step once for the whole batch (see the module docstring)."""
    lead = x.shape[:-1]
    if layer.token_layout:
        x = x.reshape(x.shape[0], math.prod(x.shape[1:-1]), layer.in_channels)
    dims = (1,) if layer.token_layout else tuple(range(2, x.dim()))
    fbm = getattr(layer, "FBM", None)
    shares = fbm is not None and fbm.shares_spectrum(plan.fused_elementwise)
    spectrum = fbm.input_spectrum(x, plan.exporting) if shares else None
    if spectrum is not None:  # the zero-frequency bin is the positions' sum: no reduction of its own
        pooled = (spectrum[(..., *(0,) * (len(dims) + 1))] / math.prod(x.shape[2:])).to(x.dtype)
    else:
        pooled = _PositionMean.apply(x, dims) if _backward_products(plan) else x.mean(dims)
    pooled = pooled.float() if plan.float32_attention else pooled
    with float32_region(x.device.type, plan.exporting) if plan.float32_attention else contextlib.nullcontext():
        att = global_attentions(layer.KSM_Global, pooled, plan)
    if fbm is not None:
        x = fbm.forward_batched(
            x,
            exporting=plan.exporting,
            reuse=plan.reuse_constants,
            compiled=plan.fused_elementwise,
            spectrum=spectrum,
        )
    if plan.recompute:
        y = checkpoint(_dynamic_conv, layer, x, pooled, att, layer.bias, plan, use_reentrant=False)
    else:
        y = _dynamic_conv(layer, x, pooled, att, layer.bias, plan)
    return y.reshape(*lead, layer.out_channels) if layer.token_layout else y
