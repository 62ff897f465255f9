"""Kernel Spatial Modulation (KSM): the per-sample attentions that scale every element of FDConv's kernel.

A global branch maps the pooled input descriptor to channel, filter, spatial and frequency-group attentions;
a local branch (an ECA-style 1-D convolution across input channels) gives one logit per kernel element. The
products are applied in the weight-image layout, rows (o, u1) by columns (i, u2...un), in which the weight is
made. Kernels of any rank: the spatial attention covers all prod(kernel_size) taps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bounded_attention import bounded_attention
from .execution import Workspace, into

__all__ = [
    "KernelAttentions",
    "KernelSpatialModulationGlobal",
    "KernelSpatialModulationLocal",
    "StarReLU",
    "modulate_weight",
    "tap_factor",
]


class KernelAttentions(NamedTuple):
    """Per-sample attentions of the global branch; None where the layer has none (the official constant 1)."""

    channel: torch.Tensor | None  # (B, Cin)
    filter: torch.Tensor | None  # (B, Cout)
    spatial: torch.Tensor | None  # (B, prod(kernel_size))
    group: torch.Tensor | None  # (B, kernel_num * param_ratio)

    def split(self, size: int, chunks: int) -> list[KernelAttentions]:
        """The attentions of ``chunks`` runs of ``size`` samples (the last may be shorter), as views."""
        parts = [[None] * chunks if t is None else t.split(size) for t in self]
        return [KernelAttentions(*chunk) for chunk in zip(*parts)]


class StarReLU(nn.Module):
    """``scale * relu(x) ** 2 + bias`` with learnable scalar scale and bias (MetaFormer)."""

    def __init__(self, device=None, dtype=None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.scale)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x).square() + self.bias


class KernelSpatialModulationGlobal(nn.Module):
    """Global branch of Kernel Spatial Modulation: per-sample channel, filter, spatial and group attentions.

    The heads are 1x1 convolutions (as in the official checkpoints) applied to the pooled descriptor.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        attention_channels: int,
        kernel_num: int,
        *,
        temp: float,
        kernel_temp: float,
        att_multi: float,
        act: str,
        only_kernel_att: bool,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.kernel_size = _kernel_tuple(kernel_size)
        self.kernel_num = kernel_num
        self.temp = temp
        self.kernel_temp = kernel_temp
        self.att_multi = att_multi
        self.act = act
        self.fc = nn.Conv2d(in_channels, attention_channels, 1, bias=False, **dd)
        self.bn = nn.BatchNorm2d(attention_channels, **dd)
        self.relu = StarReLU(**dd)
        if not only_kernel_att:
            self.channel_fc = nn.Conv2d(attention_channels, in_channels, 1, **dd)
            self.filter_fc = nn.Conv2d(attention_channels, out_channels, 1, **dd)
            if math.prod(self.kernel_size) > 1:
                self.spatial_fc = nn.Conv2d(attention_channels, math.prod(self.kernel_size), 1, **dd)
        if kernel_num > 1:
            self.kernel_fc = nn.Conv2d(attention_channels, kernel_num, 1, **dd)
        self.reset_parameters()

    def heads(self) -> list[nn.Conv2d]:
        return [
            m for m in (getattr(self, n, None) for n in ("channel_fc", "filter_fc", "spatial_fc", "kernel_fc")) if m
        ]

    def reset_parameters(self) -> None:
        """Kaiming descriptor projection (as official); every head zero, so all attentions are neutral."""
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_out", nonlinearity="relu")
        # BatchNorm's own reset writes its buffers directly; nn.init keeps frameworks that guard the init
        # functions (transformers' meta-device loading) from overwriting loaded running statistics.
        # A frozen batch norm swapped in by a detection head has no ``num_batches_tracked``.
        for name, init_fn in (
            ("weight", nn.init.ones_),
            ("bias", nn.init.zeros_),
            ("running_mean", nn.init.zeros_),
            ("running_var", nn.init.ones_),
            ("num_batches_tracked", nn.init.zeros_),
        ):
            if (tensor := getattr(self.bn, name, None)) is not None:
                init_fn(tensor)
        self.relu.reset_parameters()
        for head in self.heads():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def _normalize(self, z: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        # Detection heads swap in frozen batch norms (no ``eps``, running statistics only): those run as they are.
        if bn.training and z.shape[0] == 1 and isinstance(bn, nn.modules.batchnorm._BatchNorm):
            # Batch statistics of a single sample are degenerate (every descriptor would normalise to 0),
            # and the official layer raises here. One sample is normalised with the running statistics,
            # which it leaves unchanged.
            return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return bn(z[:, :, None, None]).flatten(1)

    def _head(self, h: torch.Tensor, name: str, temp: float) -> torch.Tensor | None:
        conv = getattr(self, name, None)
        return None if conv is None else F.linear(h, conv.weight.flatten(1), conv.bias) / temp

    def forward(self, pooled: torch.Tensor) -> KernelAttentions:
        """(B, Cin) descriptor -> channel (B, Cin), filter (B, Cout), spatial (B, prod(k)), group (B, KN) attentions."""
        h = self.relu(self._normalize(F.linear(pooled, self.fc.weight.flatten(1))))
        neutral = self.att_multi / 2 if self.act == "sigmoid" else 1.0  # the official tanh form ignores att_multi
        channel, filt, spatial = (
            None if z is None else bounded_attention(z, self.act, neutral)
            for z in (self._head(h, n, self.temp) for n in ("channel_fc", "filter_fc", "spatial_fc"))
        )
        group = self._head(h, "kernel_fc", self.kernel_temp)
        if group is not None:
            group = bounded_attention(group, self.act, 1.0 / self.kernel_num)
        return KernelAttentions(channel, filt, spatial, group)


class KernelSpatialModulationLocal(nn.Module):
    """Local branch of Kernel Spatial Modulation: an ECA-style 1-D conv across input channels.

    Produces one logit per weight element: ``out_n = Cout * prod(kernel_size)`` outputs for each of the Cin
    channels (an int ``kernel_size`` is a square 2-D kernel).
    """

    def __init__(
        self, in_channels: int, out_n: int, kernel_size: int | Sequence[int] = 1, device=None, dtype=None
    ) -> None:
        super().__init__()
        self.kernel_size = _kernel_tuple(kernel_size)
        kernel = round(math.log2(in_channels) / 2 + 0.5) // 2 * 2 + 1
        self.conv = nn.Conv1d(
            1, out_n, kernel_size=kernel, padding=(kernel - 1) // 2, bias=False, device=device, dtype=dtype
        )
        self.norm = nn.LayerNorm(in_channels, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.conv.weight)  # official: 1e-6, i.e. almost (not exactly) neutral
        self.norm.reset_parameters()

    def forward(self, pooled: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor:
        """(B, Cin) descriptor -> logits in the weight-image layout (B, Cout*k1, Cin*c) (into ``workspace``),
        with c = k2*...*kn the columns of each input channel.

        Entry ``[b, o*k+u, i*k+v]`` of a square 2-D layer is the logit of kernel element ``(o, i, u, v)``: the
        layout of the weight image the inverse FFT produces, so the weight-sized products that follow run on
        contiguous tensors. The official 1-input-channel ``Conv1d`` over the Cin sequence becomes one matrix
        product, taps (Cout*k1, taps*c) times the sliding windows spread over each channel's c columns
        (taps*c, Cin*c): c times the Conv1d's multiply-adds, but one large GEMM that writes this layout directly.
        """
        z = self.norm(pooled.to(self.conv.weight.dtype))  # callers run this outside autocast
        taps, pad = self.conv.kernel_size[0], self.conv.padding[0]
        k, c = self.kernel_size[0], math.prod(self.kernel_size[1:])
        windows = F.pad(z, (pad, pad)).unfold(1, taps, 1).transpose(1, 2)  # (B, taps, Cin)
        eye = torch.eye(c, dtype=z.dtype, device=z.device)
        spread = (windows[:, :, None, :, None] * eye[:, None, :]).flatten(3).flatten(1, 2)  # (B, taps*c, Cin*c)
        weight = self.conv.weight.view(-1, k, c, taps).transpose(2, 3).reshape(-1, taps * c)  # (Cout*k1, taps*c)
        # bmm on the expanded taps: torch.matmul would fold the batch into the rows and copy the transposed result.
        return into(workspace, "local_logits", torch.bmm, weight.expand(z.shape[0], -1, -1), spread)


def _kernel_tuple(kernel_size: int | Sequence[int]) -> tuple[int, ...]:
    return (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)


def tap_factor(
    spatial: torch.Tensor | None,
    channel: torch.Tensor | None,
    kernel_size: Sequence[int],
    in_channels: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The spatial and channel attentions merged into one factor over the kernel taps in the weight image's
    (u1, i, u2...un) order: (B, k1 or 1, Cin or 1, k2*...*kn or 1), or None without either."""
    factor = None
    for att, shape in ((spatial, (kernel_size[0], 1, math.prod(kernel_size[1:]))), (channel, (1, in_channels, 1))):
        if att is not None:
            att = att.to(dtype).view(att.shape[0], *shape)
            factor = att if factor is None else factor * att
    return factor


def modulate_weight(
    image: torch.Tensor,
    local_logits: torch.Tensor | None,
    attentions: KernelAttentions,
    kernel_size: Sequence[int],
    *,
    local_act: str,
    in_place: bool,
) -> torch.Tensor:
    """Per-sample kernel in the weight-image layout (B, Cout, k1, Cin, k2*...*kn): ``image`` (B, rows, cols) times
    the local attention and the spatial, channel and filter attentions of ``attentions`` (None entries are
    skipped; the group attention is already in the image).

    The small factors are merged first: one activation, one product with the image and at most two broadcast
    products, all on contiguous tensors of one layout. ``in_place`` overwrites ``image`` and ``local_logits``.
    """
    b, rows, cols = image.shape
    k, c = kernel_size[0], math.prod(kernel_size[1:])
    cout, cin, dtype = rows // k, cols // c, image.dtype
    taps = tap_factor(attentions.spatial, attentions.channel, kernel_size, cin, dtype)
    columns = None if taps is None else taps[:, None]  # (B, 1, k1 or 1, Cin or 1, c or 1)
    rows_factor = None if attentions.filter is None else attentions.filter.to(dtype).view(b, cout, 1, 1, 1)
    weight = image.view(b, cout, k, cin, c)
    if local_logits is not None:
        # The sigmoid's factor (att_multi) is already in the image: here the local attention is sigmoid(z) alone.
        neutral = 0.5 if local_act == "sigmoid" else 1.0
        logits = local_logits.to(dtype).view(b, cout, k, cin, c)
        local = bounded_attention(logits, local_act, neutral, in_place=in_place)
        weight = local.mul_(weight) if in_place else local * weight
    for factor in (columns, rows_factor):
        if factor is not None:
            weight = weight.mul_(factor) if in_place else weight * factor
    return weight
