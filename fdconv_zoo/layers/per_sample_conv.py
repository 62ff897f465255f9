"""Per-sample convolution: sample b of the input convolved with its own kernel, in three formulations.

All take the kernel in the weight-image layout it is generated in, (B, Cout, k1, Cin, k2*...*kn), and compute
the same sums (:class:`~.execution.ConvMethod` says which runs where), for 1 to 3 spatial dimensions. im2col can
also apply separable attentions to the unfolded input and the output instead of the kernel: the same products
on tensors several times smaller in deep layers. A bias is added inside the product (``baddbmm``, the
convolution's own bias), as ``nn.Linear`` and ``nn.Conv2d`` do: a separate addition is one more pass over the
output, and on large maps a fresh output-sized tensor (at 128x128, batch 2, a 96->384 token layer: 65 ms
against 34 ms for the product alone).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from .conv_geometry import ConvGeometry, conv_nd, output_size, pad_explicitly
from .execution import ConvMethod
from .kernel_modulation import KernelAttentions, tap_factor

__all__ = ["feature_view", "per_sample_conv", "position_mean"]

_NO_ATTENTIONS = KernelAttentions(None, None, None, None)


def feature_view(channels: torch.Tensor, token_layout: bool, spatial_dims: int) -> torch.Tensor:
    """(..., C) per-channel factors (attentions, bias) shaped to scale features: (..., 1, C) tokens or
    (..., C, 1, ...) maps."""
    return channels[..., None, :] if token_layout else channels[(..., *(None,) * spatial_dims)]


def position_mean(x: torch.Tensor, token_layout: bool) -> torch.Tensor:
    """(B, C): ``x`` averaged over its positions, as ``mean`` computes it (a sum divided by their number).

    Written as that sum so that backward hands the input an expanded view of the pooled gradient: ``mean``'s
    backward divides it into a fresh input-sized tensor, one more pass and allocation per layer (at 512x512,
    batch 2, a 32 MiB tensor for each of ResNet-50's first-stage layers)."""
    dims = (1,) if token_layout else tuple(range(2, x.dim()))
    return x.sum(dims) / math.prod([x.shape[d] for d in dims])  # a list: torch.compile cannot trace a generator here


def per_sample_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    geometry: ConvGeometry,
    method: ConvMethod,
    attentions: KernelAttentions = _NO_ATTENTIONS,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x`` (B, Cin, *spatial) -> (B, Cout, *spatial'), or (B, N, Cin) -> (B, N, Cout) for ``ConvMethod.MATMUL``
    (token layout), plus ``bias`` (Cout,).

    ``attentions`` (spatial, channel, filter) scale the kernel on the fly; only im2col takes them.
    """
    if method is ConvMethod.IM2COL:
        return _im2col(x, weight, geometry, attentions, bias)
    if any(t is not None for t in attentions):
        raise ValueError(f"{method.value} convolution takes the attentions inside its kernel, not separately")
    b, cout = weight.shape[:2]
    if method is ConvMethod.MATMUL:
        return _bmm(
            x, weight.reshape(b, cout, weight.shape[3]).transpose(1, 2), None if bias is None else bias.view(1, 1, cout)
        )
    if method is ConvMethod.POINTWISE:
        return _pointwise(x, weight.reshape(b, cout, weight.shape[3]), geometry.stride, bias)
    cin, spatial = weight.shape[3], x.shape[2:]
    kernel = weight.permute(0, 1, 3, 2, 4).reshape(b * cout, cin, *geometry.kernel_size)
    y = conv_nd(
        x.reshape(1, b * cin, *spatial), kernel, geometry, groups=b, bias=None if bias is None else bias.repeat(b)
    )
    return y.view(b, cout, *y.shape[2:])


def _bmm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``a @ b`` batched, plus ``bias`` (broadcast to the product) within the same kernel."""
    return torch.bmm(a, b) if bias is None else torch.baddbmm(bias.to(a.dtype), a, b)


def _pointwise(
    x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, ...], bias: torch.Tensor | None
) -> torch.Tensor:
    """An unpadded 1x1 kernel (B, Cout, Cin) as one batched matmul over the positions, in the input's own memory
    layout: channels-last maps (the output channels-last too) or contiguous ones; a stride first keeps every
    stride-th position (a copy of 1/prod(stride) of the input). Autograd's backward is then two batched matmuls,
    where a batch-grouped convolution's is several times slower on the CPU."""
    channels_last = x.movedim(1, -1).is_contiguous() and not x.is_contiguous()
    if any(s > 1 for s in stride):
        x = x[(slice(None), slice(None), *(slice(None, None, s) for s in stride))]
        x = x.movedim(1, -1).contiguous().movedim(-1, 1) if channels_last else x.contiguous()
    b, cin, spatial = x.shape[0], x.shape[1], x.shape[2:]
    positions, tokens = math.prod(spatial), x.movedim(1, -1)
    cout = weight.shape[1]
    if channels_last:
        y = _bmm(
            tokens.reshape(b, positions, cin), weight.transpose(1, 2), None if bias is None else bias.view(1, 1, cout)
        )
        return y.view(b, *spatial, cout).movedim(-1, 1)
    return _bmm(weight, x.reshape(b, cin, positions), None if bias is None else bias.view(1, cout, 1)).view(
        b, cout, *spatial
    )


def _unfold(x: torch.Tensor, geometry: ConvGeometry, out_size: tuple[int, ...]) -> torch.Tensor:
    """(B, Cin, *spatial) -> (B, k1, Cin, k2*...*kn, L): the input under every kernel tap, in the weight
    image's (u1, i, u2...un) order. ``F.unfold`` for 2-D maps; strided slices (one per tap: exportable with a
    symbolic batch) for 1-D and 3-D ones."""
    b, cin = x.shape[:2]
    kernel = geometry.kernel_size
    x, padding = pad_explicitly(x, geometry)
    if len(kernel) == 2:
        columns = F.unfold(x, kernel, geometry.dilation, padding, geometry.stride)  # (B, Cin*k*k, L), (i, u, v)
        return columns.view(b, cin, kernel[0], kernel[1], math.prod(out_size)).transpose(1, 2).contiguous()
    x = F.pad(x, [p for p in reversed(padding) for _ in range(2)]) if any(padding) else x
    taps = []
    for offsets in itertools.product(*(range(k) for k in kernel)):
        window = tuple(
            slice(u * d, u * d + s * (n - 1) + 1, s)
            for u, d, s, n in zip(offsets, geometry.dilation, geometry.stride, out_size)
        )
        taps.append(x[(slice(None), slice(None), *window)])
    columns = torch.stack(taps, 1).reshape(b, kernel[0], math.prod(kernel[1:]), cin, math.prod(out_size))
    return columns.transpose(2, 3).contiguous()


def _im2col(
    x: torch.Tensor,
    weight: torch.Tensor,
    geometry: ConvGeometry,
    attentions: KernelAttentions,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    b, cout, k, cin, c = weight.shape
    out_size = output_size(x.shape[2:], geometry)
    columns = _unfold(x, geometry, out_size)  # (B, k1, Cin, c, L)
    taps = tap_factor(attentions.spatial, attentions.channel, geometry.kernel_size, cin, columns.dtype)
    if taps is not None:
        columns = columns * taps[..., None]
    positions = math.prod(out_size)
    bias = None if bias is None else bias.view(1, cout, 1)
    if attentions.filter is None:
        y = _bmm(weight.reshape(b, cout, k * cin * c), columns.view(b, k * cin * c, positions), bias)
    else:  # the filter attention scales the product before the bias: one pass for both
        y = torch.bmm(weight.reshape(b, cout, k * cin * c), columns.view(b, k * cin * c, positions))
        filt = attentions.filter.to(y.dtype).view(b, cout, 1)
        y = y * filt if bias is None else torch.addcmul(bias.to(y.dtype), y, filt)
    return y.unflatten(2, out_size)
