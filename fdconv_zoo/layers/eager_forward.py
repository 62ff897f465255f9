"""FDConv's eager CPU forward: per-sample weights a chunk of samples at a time, in the formulation the plan picks.

The CPU runs ops without launch costs, so here the plan may loop over chunks of the batch (so their weight
buffers stay in cache and are reused), recompute weights in backward, write products in place and pick among the
convolution's formulations by shape (:mod:`.execution`). Exported graphs take this path too (matrix-form inverse
FFT, im2col). Accelerators and compiled graphs take :mod:`.batched_forward`.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint

from .execution import ConvMethod, ExecutionPlan, Workspace, float32_region
from .fourier_weight import WeightSpectrum, static_spectrum, weight_image
from .kernel_modulation import KernelAttentions, modulate_weight
from .per_sample_conv import feature_view, per_sample_conv, position_mean

if TYPE_CHECKING:
    from .fdconv import FDConv

__all__ = ["eager_forward"]


def eager_forward(layer: FDConv, x: torch.Tensor, plan: ExecutionPlan) -> torch.Tensor:
    """``layer(x)`` for a non-empty batch under an eager (CPU or export) ``plan``."""
    lead = x.shape[:-1]
    if layer.token_layout:
        x = x.reshape(x.shape[0], math.prod(x.shape[1:-1]), layer.in_channels)  # explicit sizes: batch 0 under export
    pooled = position_mean(x, layer.token_layout)
    # Under autocast the small (B, Cin) attention work runs in float32: half precision costs visible accuracy.
    with float32_region(x.device.type, plan.exporting) if plan.float32_attention else contextlib.nullcontext():
        attentions = layer.KSM_Global(pooled.float() if plan.float32_attention else pooled)
    if hasattr(layer, "FBM"):
        x = layer.FBM(
            x,
            in_place=plan.in_place,
            exporting=plan.exporting,
            recompute=plan.recompute_bands,
            convolution_gemms=plan.convolution_band_gemms,
            tap_sum_attention=plan.tap_sum_attention,
            reuse_constants=plan.reuse_constants,
        )
    filt = attentions.filter
    if not plan.fold_attention:  # the separable attentions scale the features; the kernel keeps the others
        if attentions.channel is not None:
            x = x * feature_view(attentions.channel, layer.token_layout, layer.spatial_dims).to(x.dtype)
        attentions = attentions._replace(channel=None, filter=None)
    with float32_region(x.device.type, plan.exporting):
        # Once per batch; separate planes only where the products run on them (the CPU multiplies complex pairs).
        spectrum = static_spectrum(
            layer.dft_weight, layer.frequency_group, copy_planes=plan.in_place and not plan.fft_reads_hermitian_part
        )
    # The bias is added inside the convolution unless the filter attention must scale the output first.
    filter_on_output = filt is not None and not plan.fold_attention
    workspaces: dict[int, Workspace] = {}  # buffers reused across chunks without autograd, one set per chunk size
    if plan.samples_per_chunk is None:  # no loop over a batch size that may be symbolic, and no indexing
        chunks = [(x, pooled, attentions)]
    else:
        # split views: their backward concatenates the chunks' gradients, where indexing (even x[:]) makes
        # every chunk's gradient a zero-filled tensor of the whole input.
        size = plan.samples_per_chunk
        xs = x.split(size)
        chunks = list(zip(xs, pooled.split(size), attentions.split(size, len(xs))))
    outputs = []
    for chunk in chunks:
        args = (*chunk, spectrum, None if filter_on_output else layer.bias, plan)
        if plan.recompute:
            # Keep none of the per-sample weights for backward, recompute them there, a chunk at a time
            # (KSM_Global, with its BatchNorm statistics, stays outside and runs once).
            outputs.append(checkpoint(_dynamic_conv, layer, *args, use_reentrant=False))
        else:
            workspace = workspaces.setdefault(args[0].shape[0], {}) if plan.reuses_buffers else None
            outputs.append(_dynamic_conv(layer, *args, workspace))
    y = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    if filter_on_output:
        factor = feature_view(filt, layer.token_layout, layer.spatial_dims).to(y.dtype)
        if layer.bias is None:
            y = y * factor
        else:
            bias = layer.bias if layer.token_layout else feature_view(layer.bias, False, layer.spatial_dims)
            y = torch.addcmul(bias.to(y.dtype), y, factor)
    return y.reshape(*lead, layer.out_channels) if layer.token_layout else y


def _dynamic_conv(
    layer: FDConv,
    x: torch.Tensor,
    pooled: torch.Tensor,
    attentions: KernelAttentions,
    spectrum: WeightSpectrum,
    bias: torch.Tensor | None,
    plan: ExecutionPlan,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """Build the per-sample weights (local attention, spectrum, modulation) and apply them and ``bias`` to ``x``.

    With im2col the separable attentions (spatial, and channel/filter when folded) scale the unfolded input
    and the output instead of the weight.
    """
    on_features = (
        attentions._replace(group=None)
        if plan.method is ConvMethod.IM2COL
        else KernelAttentions(None, None, None, None)
    )
    on_weight = KernelAttentions(None, None, None, None) if plan.method is ConvMethod.IM2COL else attentions
    with float32_region(x.device.type, plan.exporting):
        local_logits = layer.KSM_Local(pooled, workspace) if hasattr(layer, "KSM_Local") else None
        # att_multi, the local attention's constant factor, scales the spectrum (a scalar) instead of the weight.
        scale = layer.att_multi if local_logits is not None and layer.ksm_local_act == "sigmoid" else 1.0
        image = weight_image(
            spectrum,
            attentions.group,
            kernel_num=layer.kernel_num,
            scale=layer.alpha * scale,
            cols=layer.weight_image_shape[1],
            workspace=workspace,
            exportable=plan.exporting,
            in_place=plan.in_place,
            reads_hermitian_part=plan.fft_reads_hermitian_part,
        )
        weight = modulate_weight(
            image, local_logits, on_weight, layer.kernel_size, local_act=layer.ksm_local_act, in_place=plan.in_place
        )
    if not plan.float32_attention:  # under autocast the convolution itself casts the float32 weight
        weight = weight.to(x.dtype)
    return per_sample_conv(x, weight, layer, plan.method, on_features, bias)
