"""Per-sample convolution: sample b of the input convolved with its own kernel, in three formulations.

All take the kernel in the weight-image layout it is generated in, (B, Cout, k, Cin, k), and compute the same
sums (:class:`~.execution.ConvMethod` says which runs where). im2col can also apply separable attentions to the
unfolded input and the output instead of the kernel: the same products on tensors several times smaller in
deep layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .conv_geometry import ConvGeometry, conv2d, output_size, pad_explicitly
from .execution import ConvMethod
from .kernel_modulation import KernelAttentions, tap_factor

__all__ = ["per_sample_conv"]

_NO_ATTENTIONS = KernelAttentions(None, None, None, None)


def per_sample_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    geometry: ConvGeometry,
    method: ConvMethod,
    attentions: KernelAttentions = _NO_ATTENTIONS,
) -> torch.Tensor:
    """``x`` (B, Cin, H, W) -> (B, Cout, H', W'), or (B, N, Cin) -> (B, N, Cout) for ``ConvMethod.MATMUL``.

    ``attentions`` (spatial, channel, filter) scale the kernel on the fly; only im2col takes them.
    """
    if method is ConvMethod.IM2COL:
        return _im2col(x, weight, geometry, attentions)
    if any(t is not None for t in attentions):
        raise ValueError(f"{method.value} convolution takes the attentions inside its kernel, not separately")
    b, cout = weight.shape[:2]
    if method is ConvMethod.MATMUL:
        return torch.bmm(x, weight.reshape(b, cout, weight.shape[3]).transpose(1, 2))
    k, cin = weight.shape[2], weight.shape[3]
    kernel = weight.permute(0, 1, 3, 2, 4).reshape(b * cout, cin, k, k)
    y = conv2d(x.reshape(1, b * cin, *x.shape[-2:]), kernel, geometry, groups=b)
    return y.view(b, cout, *y.shape[-2:])


def _im2col(x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry, attentions: KernelAttentions) -> torch.Tensor:
    b, cout, k, cin = weight.shape[:4]
    h_out, w_out = output_size(x.shape[-2:], geometry)
    x, padding = pad_explicitly(x, geometry)
    columns = F.unfold(x, geometry.kernel_size, geometry.dilation, padding, geometry.stride)  # (B, Cin*k*k, L), (i, u, v)
    columns = columns.view(b, cin, k, k, h_out * w_out).transpose(1, 2).contiguous()  # (B, k, Cin, k, L): the image's (u, i, v)
    taps = tap_factor(attentions.spatial, attentions.channel, k, cin, columns.dtype)
    if taps is not None:
        columns = columns * taps[..., None]
    y = torch.bmm(weight.reshape(b, cout, k * cin * k), columns.view(b, k * cin * k, h_out * w_out))
    if attentions.filter is not None:
        y = y * attentions.filter.to(y.dtype).view(b, cout, 1)
    return y.unflatten(2, (h_out, w_out))
