"""FDConv: Frequency Dynamic Convolution (Chen et al., CVPR 2025, arXiv 2503.18783).

A re-implementation of the official layer that computes the same function and loads its state dicts
unchanged (parameter names ``dft_weight``, ``KSM_Global.*``, ``KSM_Local.*``, ``FBM.*``, ``bias``; a layer
that falls back to a plain convolution has ``weight``/``bias``). Differences from the official code, all
outside the function of trained layers: every attention head starts at zero so a converted layer is
exactly its source convolution; batch size 1 trains; the frequency grouping does not depend on the
CPU's SIMD level; ``padding_mode`` is honoured; ``kernel_num`` need not divide the number of bins; the
layer also runs on ``(B, ..., C)`` token tensors as a drop-in for ``nn.Linear``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .frequency import band_lowpass, frequency_group_map, into, inverse_weight_planes, is_exporting

__all__ = [
    "FDConv",
    "FrequencyBandModulation",
    "KernelSpatialModulationGlobal",
    "KernelSpatialModulationLocal",
    "StarReLU",
    "DEFAULT_FBM_CFG",
]

DEFAULT_FBM_CFG: dict[str, Any] = dict(
    k_list=[2, 4, 8],
    lowfreq_att=False,
    fs_feat="feat",
    act="sigmoid",
    spatial="conv",
    spatial_group=1,
    spatial_kernel=3,
    init="zero",
    global_selection=False,
)
# Keys the official FrequencyBandModulation accepts (it swallows unknown ones; we reject typos instead).
_FBM_KEYS = set(DEFAULT_FBM_CFG) | {"max_size", "exact_masks"}
_ACTIVATIONS = ("sigmoid", "tanh")


def _float32_region(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off (FFTs and band splits run in float32); a no-op while exporting, where an autocast region
    only adds a wrapper op to the graph (exported graphs run in the dtype they were traced in)."""
    return contextlib.nullcontext() if is_exporting() else torch.autocast(device_type, enabled=False)


def _attention(logits: torch.Tensor, act: str, att_multi: float) -> torch.Tensor:
    """The official bounded attentions: ``m * sigmoid(z)`` or ``1 + tanh(z)`` (both 1 at z = 0 when m = 2)."""
    if act == "sigmoid":
        return torch.sigmoid(logits) * att_multi
    return 1.0 + torch.tanh(logits)


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
        kernel_size: int,
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
        self.kernel_size = kernel_size
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
            if kernel_size > 1:
                self.spatial_fc = nn.Conv2d(attention_channels, kernel_size * kernel_size, 1, **dd)
        if kernel_num > 1:
            self.kernel_fc = nn.Conv2d(attention_channels, kernel_num, 1, **dd)
        self.reset_parameters()

    def heads(self) -> list[nn.Conv2d]:
        return [m for m in (getattr(self, n, None) for n in ("channel_fc", "filter_fc", "spatial_fc", "kernel_fc")) if m]

    def reset_parameters(self) -> None:
        """Kaiming descriptor projection (as official); every head zero, so all attentions are neutral."""
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_out", nonlinearity="relu")
        # BatchNorm's own reset writes its buffers directly; nn.init keeps frameworks that guard the init
        # functions (transformers' meta-device loading) from overwriting loaded running statistics.
        for tensor, init_fn in ((self.bn.weight, nn.init.ones_), (self.bn.bias, nn.init.zeros_), (self.bn.running_mean, nn.init.zeros_),
                                (self.bn.running_var, nn.init.ones_), (self.bn.num_batches_tracked, nn.init.zeros_)):
            init_fn(tensor)
        self.relu.reset_parameters()
        for head in self.heads():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def _normalize(self, z: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if bn.training and z.shape[0] == 1:
            # Batch statistics of a single sample are degenerate (every descriptor would normalise to 0),
            # and the official layer raises here. One sample is normalised with the running statistics,
            # which it leaves unchanged.
            return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return bn(z[:, :, None, None]).flatten(1)

    def forward(
        self, pooled: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(B, Cin) descriptor -> channel (B, Cin), filter (B, Cout), spatial (B, k*k), group (B, KN) attentions.

        An attention the layer does not have is returned as None (the official code uses the constant 1).
        """
        h = F.linear(pooled, self.fc.weight.flatten(1))
        h = self.relu(self._normalize(h))

        def head(name: str, temp: float) -> torch.Tensor | None:
            conv = getattr(self, name, None)
            return None if conv is None else F.linear(h, conv.weight.flatten(1), conv.bias) / temp

        channel, filt, spatial = (head(n, self.temp) for n in ("channel_fc", "filter_fc", "spatial_fc"))
        channel, filt, spatial = (None if z is None else _attention(z, self.act, self.att_multi) for z in (channel, filt, spatial))
        kernel = head("kernel_fc", self.kernel_temp)
        if kernel is not None:
            if self.act == "softmax":
                kernel = torch.softmax(kernel, dim=1)
            elif self.act == "sigmoid":
                kernel = torch.sigmoid(kernel) * (2.0 / self.kernel_num)
            else:
                kernel = (1.0 + torch.tanh(kernel)) / self.kernel_num
        return channel, filt, spatial, kernel


class KernelSpatialModulationLocal(nn.Module):
    """Local branch of Kernel Spatial Modulation: an ECA-style 1-D conv across input channels.

    Produces one logit per weight element: ``out_n = Cout * k * k`` outputs for each of the Cin channels.
    """

    def __init__(self, in_channels: int, out_n: int, kernel_size: int = 1, device=None, dtype=None) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        kernel = round(math.log2(in_channels) / 2 + 0.5) // 2 * 2 + 1
        self.conv = nn.Conv1d(1, out_n, kernel_size=kernel, padding=(kernel - 1) // 2, bias=False, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(in_channels, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.conv.weight)  # official: 1e-6, i.e. almost (not exactly) neutral
        self.norm.reset_parameters()

    def forward(self, pooled: torch.Tensor, workspace: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, Cin) descriptor -> logits in the weight-image layout (B, Cout*k, Cin*k) (into ``workspace``, see ``into``).

        Entry ``[b, o*k+u, i*k+v]`` is the logit of kernel element ``(o, i, u, v)``: the layout of the weight
        image the inverse FFT produces, so the weight-sized products that follow run on contiguous tensors.
        The official 1-input-channel ``Conv1d`` over the Cin sequence becomes one matrix product, taps
        (Cout*k, taps*k) times the sliding windows spread over each channel's k columns (taps*k, Cin*k): k
        times the Conv1d's multiply-adds, but one large GEMM that writes this layout directly.
        """
        z = self.norm(pooled.to(self.conv.weight.dtype))  # callers run this outside autocast
        taps, pad, k = self.conv.kernel_size[0], self.conv.padding[0], self.kernel_size
        windows = F.pad(z, (pad, pad)).unfold(1, taps, 1).transpose(1, 2)  # (B, taps, Cin)
        eye = torch.eye(k, dtype=z.dtype, device=z.device)
        spread = (windows[:, :, None, :, None] * eye[:, None, :]).flatten(3).flatten(1, 2)  # (B, taps*k, Cin*k)
        weight = self.conv.weight.view(-1, k, k, taps).transpose(2, 3).reshape(-1, taps * k)  # (Cout*k, taps*k)
        return into(workspace, "local_logits", torch.matmul, weight, spread)


class FrequencyBandModulation(nn.Module):
    """Splits the input into frequency bands and re-weights each band with a spatial attention map.

    With all attentions equal to 1 the bands telescope back to the input, so zero-initialised
    attention convolutions make the module an identity.
    """

    def __init__(
        self,
        in_channels: int,
        k_list: Sequence[int] = (2, 4, 8),
        lowfreq_att: bool = False,
        act: str = "sigmoid",
        spatial_group: int = 1,
        spatial_kernel: int = 3,
        init: str = "zero",
        exact_masks: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if act not in ("sigmoid", "tanh", "softmax"):
            raise ValueError(f"fbm_cfg act must be 'sigmoid', 'tanh' or 'softmax', got {act!r}")
        if spatial_group > 64:
            spatial_group = in_channels  # official rule
        if in_channels % spatial_group:
            raise ValueError(f"fbm_cfg spatial_group={spatial_group} must divide in_channels={in_channels}")
        self.k_list = [int(k) for k in k_list]
        self.lowfreq_att = lowfreq_att
        self.act = act
        self.spatial_group = spatial_group
        self.init = init
        self.exact_masks = exact_masks
        n_att = len(self.k_list) + int(lowfreq_att)
        self.freq_weight_conv_list = nn.ModuleList(
            nn.Conv2d(
                in_channels, spatial_group, spatial_kernel, padding=spatial_kernel // 2, groups=spatial_group,
                bias=True, device=device, dtype=dtype,
            )
            for _ in range(n_att)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in self.freq_weight_conv_list:
            if self.init == "zero":  # official: N(0, 1e-6^2); exactly zero makes the module an exact identity
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
            else:
                conv.reset_parameters()

    def _attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """All band attentions from one grouped conv: (B, n_att, G, H, W)."""
        convs = self.freq_weight_conv_list
        n, g = len(convs), self.spatial_group
        weight = torch.stack([c.weight for c in convs], 1)  # (G, n, Cin/G, s, s): group-major for groups=G
        bias = torch.stack([c.bias for c in convs], 1)
        ref = convs[0]
        logits = F.conv2d(x, weight.flatten(0, 1), bias.flatten(), padding=ref.padding, groups=g)
        logits = logits.unflatten(1, (g, n)).transpose(1, 2)
        if self.act == "sigmoid":
            return 2.0 * torch.sigmoid(logits)
        if self.act == "tanh":
            return 1.0 + torch.tanh(logits)
        return torch.softmax(logits, dim=2) * g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g, n = self.spatial_group, len(self.k_list)
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(compute_dtype)
        with _float32_region(x.device.type):  # the band split stays in float32 under autocast
            lows = band_lowpass(xf, self.k_list, self.exact_masks)  # n tensors (B, C, H, W)
        att = self._attention_maps(x).to(compute_dtype)  # (B, n_att, G, H, W)
        # sum_j a_j (low_{j-1} - low_j) + a_n low_{n-1}, with low_{-1} = x and a_n = 1 (or the low-band
        # attention), telescoped into a_0 x + sum_j (a_{j+1} - a_j) low_j: no high-band tensors.
        last = att[:, n:] if self.lowfreq_att else torch.ones_like(att[:, :1])
        coefficients = torch.cat([att[:, 1:n], last], 1) - att[:, :n]  # (B, n, G, H, W)
        out = att[:, 0, :, None] * xf.unflatten(1, (g, c // g))
        in_place = not (torch.is_grad_enabled() and (out.requires_grad or any(low.requires_grad for low in lows)))
        for j in range(n):  # a few bands; in place without autograd (a fresh feature-sized tensor costs 20x more here)
            low = lows[j].unflatten(1, (g, c // g))
            out = out.addcmul_(coefficients[:, j, :, None], low) if in_place else out.addcmul(coefficients[:, j, :, None], low)
        return out.flatten(1, 2).to(x.dtype)


class FDConv(nn.Module):
    """Frequency Dynamic Convolution, a drop-in replacement for ``nn.Conv2d`` (or ``nn.Linear``).

    The weight is stored as its 2-D Fourier spectrum (``dft_weight``), split into ``kernel_num`` disjoint
    frequency groups; per sample, group attentions (Fourier Disjoint Weights), channel/filter/spatial and
    per-element attentions (Kernel Spatial Modulation) and a band-wise re-weighting of the input
    (Frequency Band Modulation, 3x3 layers) make the convolution input-dependent.

    Arguments are those of ``nn.Conv2d`` followed by the official FDConv keyword arguments (same names
    and defaults, FDCONV_SPEC §1). Extra keyword: ``token_layout=True`` makes a 1x1 layer act on
    ``(B, ..., C)`` tensors like ``nn.Linear`` (all middle axes are positions); ``fbm_cfg`` also accepts
    ``exact_masks=True`` (band masks computed at the true input size instead of resized from 64x64);
    ``recompute_weight`` decides whether the per-sample weights are kept for backward (False: fastest
    training step) or recomputed there (True: no weight-sized tensor is kept); the default recomputes them
    where they outsize the layer's input (deep, small-map layers: 94x a 512-channel 7x7 map).

    Layers with ``min(in, out) <= use_fdconv_if_c_gt`` or a kernel size outside ``use_fdconv_if_k_in``
    are plain convolutions (``use_fdconv`` is False), exactly like the official layer.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        reduction: float = 0.0625,
        kernel_num: int | None = 4,
        use_fdconv_if_c_gt: int = 16,
        use_fdconv_if_k_in: Sequence[int] = (1, 3),
        use_fdconv_if_stride_in: Sequence[int] = (1,),
        use_fbm_if_k_in: Sequence[int] = (3,),
        use_fbm_for_stride: bool = False,
        kernel_temp: float = 1.0,
        temp: float | None = None,
        att_multi: float = 2.0,
        param_ratio: int = 1,
        param_reduction: float = 1.0,
        ksm_only_kernel_att: bool = False,
        att_grid: int = 1,
        use_ksm_local: bool = True,
        ksm_local_act: str = "sigmoid",
        ksm_global_act: str = "sigmoid",
        spatial_freq_decompose: bool = False,
        convert_param: bool = True,
        linear_mode: bool = False,
        fbm_cfg: dict[str, Any] | None = None,
        token_layout: bool = False,
        recompute_weight: bool | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        # nn.Conv2d normalises and validates the convolution arguments; built on "meta", it allocates nothing.
        spec = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device="meta")
        self.in_channels, self.out_channels = spec.in_channels, spec.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = spec.kernel_size, spec.stride, spec.padding, spec.dilation
        self.groups, self.padding_mode = spec.groups, spec.padding_mode
        self._reversed_padding_repeated_twice = spec._reversed_padding_repeated_twice
        self.token_layout = token_layout
        self.recompute_weight = recompute_weight
        if token_layout and (self.kernel_size != (1, 1) or self.stride != (1, 1) or self.padding not in ((0, 0), "valid") or groups != 1):
            raise ValueError(
                "token_layout=True is the nn.Linear form of FDConv: it needs kernel_size=1, stride=1, padding=0 "
                f"and groups=1, got kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, groups={groups}"
            )

        k = self.kernel_size[0]
        self.use_fdconv = min(in_channels, out_channels) > use_fdconv_if_c_gt and k in use_fdconv_if_k_in
        self.use_fdconv_if_stride_in = list(use_fdconv_if_stride_in)  # kept for config parity; never checked (as official)
        if not self.use_fdconv:
            wshape = (out_channels, in_channels) if token_layout else (out_channels, in_channels // self.groups, *self.kernel_size)
            self.weight = nn.Parameter(torch.empty(wshape, **dd))
            self.bias = nn.Parameter(torch.empty(out_channels, **dd)) if bias else None
            self.reset_parameters()
            return

        self._check_fdconv_args(
            kernel_size=self.kernel_size, groups=groups, param_reduction=param_reduction, convert_param=convert_param,
            spatial_freq_decompose=spatial_freq_decompose, ksm_global_act=ksm_global_act,
            ksm_only_kernel_att=ksm_only_kernel_att, ksm_local_act=ksm_local_act, param_ratio=param_ratio,
        )
        if kernel_num is None:
            kernel_num = out_channels // 2
            kernel_temp = math.sqrt(kernel_num * param_ratio)
        if temp is None:
            temp = kernel_temp
        if kernel_num < 1:
            raise ValueError(f"kernel_num must be >= 1, got {kernel_num}")
        self.kernel_num = kernel_num
        self.param_ratio = param_ratio
        self.kernel_temp, self.temp, self.att_multi = kernel_temp, temp, att_multi
        self.ksm_local_act = ksm_local_act
        self.alpha = (min(in_channels, out_channels) // 2) * kernel_num * param_ratio

        self.bias = nn.Parameter(torch.empty(out_channels, **dd)) if bias else None
        rows, cols = out_channels * k, in_channels * k
        self.dft_weight = nn.Parameter(torch.empty(param_ratio, rows, cols // 2 + 1, 2, **dd))
        self.KSM_Global = KernelSpatialModulationGlobal(
            in_channels, out_channels, k, max(int(in_channels * reduction), 16), kernel_num * param_ratio,
            temp=temp, kernel_temp=kernel_temp, att_multi=att_multi, act=ksm_global_act,
            only_kernel_att=ksm_only_kernel_att, **dd,
        )
        fbm_cfg = {**DEFAULT_FBM_CFG, **(fbm_cfg or {})}
        unknown = set(fbm_cfg) - _FBM_KEYS
        if unknown:
            raise ValueError(f"unknown fbm_cfg keys {sorted(unknown)}; valid keys: {sorted(_FBM_KEYS)}")
        if fbm_cfg["spatial"] != "conv":
            raise ValueError(f"fbm_cfg spatial={fbm_cfg['spatial']!r} is not supported; the official layer implements 'conv' only")
        if tuple(fbm_cfg.get("max_size", (64, 64))) != (64, 64):
            raise ValueError("fbm_cfg max_size other than (64, 64) is not supported (the official layer never sets it)")
        if k in use_fbm_if_k_in or (use_fbm_for_stride and self.stride[0] > 1):
            self.FBM = FrequencyBandModulation(
                in_channels, k_list=fbm_cfg["k_list"], lowfreq_att=fbm_cfg["lowfreq_att"], act=fbm_cfg["act"],
                spatial_group=fbm_cfg["spatial_group"], spatial_kernel=fbm_cfg["spatial_kernel"], init=fbm_cfg["init"],
                exact_masks=fbm_cfg.get("exact_masks", False), **dd,
            )
        if use_ksm_local:
            self.KSM_Local = KernelSpatialModulationLocal(in_channels, out_channels * k * k, kernel_size=k, **dd)
        self.register_buffer("frequency_group", torch.empty(rows, cols // 2 + 1, dtype=torch.int32, device=device), persistent=False)
        self.init_non_persistent_buffers()
        self.reset_parameters()

    @staticmethod
    def _check_fdconv_args(**a: Any) -> None:
        problems = {
            "kernel_size": (a["kernel_size"][0] != a["kernel_size"][1], f"kernel_size={a['kernel_size']}: FDConv layers need a square kernel"),
            "groups": (a["groups"] != 1, f"groups={a['groups']}: FDConv layers must have groups=1 (raise use_fdconv_if_c_gt or keep this layer an nn.Conv2d)"),
            "param_reduction": (a["param_reduction"] != 1, "param_reduction != 1 is not supported (the official layer drops its scale there, FDCONV_SPEC §9)"),
            "convert_param": (not a["convert_param"], "convert_param=False is not supported; the weight is always stored as dft_weight"),
            "spatial_freq_decompose": (a["spatial_freq_decompose"], "spatial_freq_decompose=True is not supported (the official forward crashes with it)"),
            "ksm_global_act": (
                a["ksm_global_act"] not in (*_ACTIVATIONS, "softmax") or (a["ksm_global_act"] == "softmax" and not a["ksm_only_kernel_att"]),
                f"ksm_global_act={a['ksm_global_act']!r}: use 'sigmoid' or 'tanh' ('softmax' only with ksm_only_kernel_att=True)",
            ),
            "ksm_local_act": (a["ksm_local_act"] not in _ACTIVATIONS, f"ksm_local_act={a['ksm_local_act']!r}: use 'sigmoid' or 'tanh'"),
            "param_ratio": (int(a["param_ratio"]) != a["param_ratio"] or a["param_ratio"] < 1, f"param_ratio must be a positive integer, got {a['param_ratio']}"),
        }
        errors = [msg for bad, msg in problems.values() if bad]
        if errors:
            raise ValueError("invalid FDConv arguments: " + "; ".join(errors))

    # ------------------------------------------------------------------------------------------ init
    def init_non_persistent_buffers(self) -> None:
        """(Re)compute the frequency group map; call after meta-device materialisation (timm convention)."""
        if self.use_fdconv and not self.frequency_group.is_meta:
            rows, n_cols = self.frequency_group.shape
            groups = frequency_group_map(rows, self.in_channels * self.kernel_size[0], self.kernel_num)
            self.frequency_group = groups.to(self.frequency_group.device)

    def reset_parameters(self) -> None:
        """nn.Conv2d's default weight and bias (converted to the spectrum), attentions neutral."""
        if not self.use_fdconv:
            nn.Conv2d.reset_parameters(self)  # kaiming-uniform weight and fan-in bias, as nn.Conv2d/nn.Linear
            return
        with torch.no_grad():
            self.dft_weight.copy_(self.default_spectrum())
        self.reset_bias()
        self.reset_attention()

    def reset_bias(self) -> None:
        """nn.Conv2d's fan-in uniform bias init."""
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def default_spectrum(self) -> torch.Tensor:
        """Spectrum of a freshly initialised nn.Conv2d weight (kaiming-uniform, a=sqrt(5)), as the official init.

        Separate from reset_parameters so frameworks with their own guarded initialisers (transformers'
        ``init.copy_``) can set ``dft_weight`` without re-drawing already loaded tensors.
        """
        from ..conversion import conv_weight_to_spectrum

        weight = torch.empty(self.conv_weight_shape, device=self.dft_weight.device, dtype=self.dft_weight.dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        return conv_weight_to_spectrum(weight, self.param_ratio)

    def reset_attention(self) -> None:
        """Make every attention neutral (exactly 1, group attention 1/groups): the layer is then its static conv."""
        if not self.use_fdconv:
            return
        self.KSM_Global.reset_parameters()
        for name in ("FBM", "KSM_Local"):
            if hasattr(self, name):
                getattr(self, name).reset_parameters()

    @classmethod
    def from_conv(cls, module: nn.Conv2d | nn.Linear, **fdconv_kwargs: Any) -> FDConv:
        """An FDConv computing exactly ``module``'s function (attentions neutral), its weight converted.

        ``nn.Linear`` gives a token-layout 1x1 FDConv for ``(B, ..., C)`` inputs. The FDConv keyword
        arguments (e.g. ``kernel_num=64``) are passed through; parameters keep the source's device,
        dtype and ``requires_grad``.
        """
        if isinstance(module, nn.Linear):
            conv_args = dict(in_channels=module.in_features, out_channels=module.out_features, kernel_size=1, token_layout=True)
        elif isinstance(module, nn.Conv2d):
            conv_args = dict(
                in_channels=module.in_channels, out_channels=module.out_channels, kernel_size=module.kernel_size,
                stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups,
                padding_mode=module.padding_mode,
            )
        else:
            raise TypeError(f"FDConv.from_conv converts nn.Conv2d or nn.Linear modules, got {type(module).__name__}")
        # Built on "meta" and materialised once: the default weight would be drawn and converted for nothing.
        layer = cls(**conv_args, bias=module.bias is not None, **fdconv_kwargs, device="meta", dtype=module.weight.dtype)
        if layer.use_fdconv and layer.ksm_local_act == "sigmoid" and layer.att_multi != 2.0:
            raise ValueError(f"exact conversion needs att_multi=2 with sigmoid attentions (m * sigmoid(0) must be 1), got {layer.att_multi}")
        layer = layer.to_empty(device=module.weight.device)
        layer.reset_attention()
        layer.init_non_persistent_buffers()
        layer.load_conv_weight(module.weight.detach(), None if module.bias is None else module.bias.detach())
        layer.train(module.training)
        for p in layer.parameters():
            p.requires_grad_(module.weight.requires_grad)
        return layer

    @torch.no_grad()
    def load_conv_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Set the static weight from a plain conv (or linear) weight; attentions are left as they are."""
        from ..conversion import conv_weight_to_spectrum

        expected = self.conv_weight_shape
        if not self.accepts_conv_weight(weight.shape):
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit this layer; expected {expected}")
        if self.use_fdconv:
            self.dft_weight.copy_(conv_weight_to_spectrum(weight.reshape(expected), self.param_ratio))
        else:
            self.weight.copy_(weight.reshape(self.weight.shape))
        if (bias is None) != (self.bias is None):
            raise ValueError(f"bias mismatch: the layer {'has' if self.bias is not None else 'has no'} bias, the source {'has none' if bias is None else 'has one'}")
        if bias is not None:
            self.bias.copy_(bias)

    @property
    def conv_weight_shape(self) -> tuple[int, ...]:
        """Shape of the equivalent static ``nn.Conv2d`` weight."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def accepts_conv_weight(self, shape: Sequence[int]) -> bool:
        """Whether a plain weight of ``shape`` converts into this layer: the conv weight, or (out, in) of an
        ``nn.Linear`` for a 1x1 layer."""
        expected = self.conv_weight_shape
        return tuple(shape) == expected or (self.kernel_size == (1, 1) and tuple(shape) == expected[:2])

    # nn.Linear-style aliases, so the token-layout form is a drop-in for nn.Linear.
    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    # ---------------------------------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        if not x.is_floating_point():
            raise TypeError(f"FDConv expects a floating-point input, got dtype {x.dtype}")
        if self.token_layout:
            if x.dim() < 2 or x.shape[-1] != self.in_channels:
                raise ValueError(
                    f"FDConv (token layout) expects a (B, ..., {self.in_channels}) input with channels last, got shape {tuple(x.shape)}"
                )
        elif x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"FDConv expects an NCHW input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
                + ("; for (B, ..., C) tensors build the layer with token_layout=True" if x.dim() != 4 else "")
            )

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, groups: int, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def spectral_weight(self, group_attention: torch.Tensor | None, scale: float = 1.0) -> torch.Tensor:
        """Per-sample weight image from the spectrum and the group attentions: (B, Cout*k, Cin*k), times ``scale``.

        ``image[b, o*k+u, i*k+v]`` is the static kernel entry ``[o, i, u, v]`` of sample b (official layout).
        Computed in float32 (float64 for float64 parameters); callers disable autocast: FFTs lack half precision.
        """
        return self._weight_image(*self._static_spectrum(), group_attention, scale)

    def _static_spectrum(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What every sample's weight image shares, made once per forward: the stored spectrum as real and
        imaginary planes (P, rows, n2) in the compute dtype, and the bins' group indices as int64 (``gather``
        needs them). One pair of planes for all samples also means backward reassembles one gradient for the
        batch. The planes are contiguous copies without autograd (per-bin products on planes are 3x faster than
        on the interleaved pairs) and views of the parameter with it (autograd then keeps the parameter itself,
        not a weight-sized copy per layer)."""
        spectrum = self.dft_weight.to(torch.promote_types(self.dft_weight.dtype, torch.float32))
        if not (torch.is_grad_enabled() and spectrum.requires_grad):
            spectrum = spectrum.movedim(-1, 0).contiguous().movedim(0, -1)
        return spectrum[..., 0], spectrum[..., 1], self.frequency_group.long()

    def _weight_image(
        self,
        real: torch.Tensor,
        imag: torch.Tensor,
        group_index: torch.Tensor,
        group_attention: torch.Tensor | None,
        scale: float,
        workspace: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        cols = self.in_channels * self.kernel_size[0]
        if group_attention is None:  # a single group: the constant attention 1/(KN*P)
            factor = self.alpha * scale / (self.kernel_num * self.param_ratio)
            return inverse_weight_planes(real.sum(0, keepdim=True) * factor, imag.sum(0, keepdim=True) * factor, cols)
        # The group attention (scaled by alpha) of every bin, gathered from the KN per sample: no scatter into a
        # zero map. Along the last axis, gather is 6x faster than indexing with the group map.
        ka = group_attention.to(real.dtype).view(-1, self.param_ratio, 1, self.kernel_num) * (self.alpha * scale)
        b, rows = ka.shape[0], real.shape[-2]
        index = group_index.expand(b, self.param_ratio, *group_index.shape)
        per_bin = into(workspace, "per_bin", torch.gather, ka.expand(b, self.param_ratio, rows, self.kernel_num), 3, index)  # (B, P, rows, n2)
        if self.param_ratio == 1:
            real, imag = (into(workspace, name, torch.mul, plane[0], per_bin[:, 0]) for name, plane in (("real", real), ("imag", imag)))
            return inverse_weight_planes(real, imag, cols, workspace)
        return inverse_weight_planes((real * per_bin).sum(1), (imag * per_bin).sum(1), cols)

    def _fold_attention_into_weight(self, positions: int) -> bool:
        """Channel and filter attentions are separable: fold them into the per-sample weight when it is
        smaller than the features (the official rule, on the pre-stride size), otherwise scale the features.
        Both give the same function up to rounding."""
        return self.out_channels * self.in_channels * self.kernel_size[0] ** 2 < (self.in_channels + self.out_channels) * positions

    def _modulated_weight(
        self,
        image: torch.Tensor,
        local_logits: torch.Tensor | None,
        spatial_att: torch.Tensor | None,
        channel_att: torch.Tensor | None,
        filter_att: torch.Tensor | None,
    ) -> torch.Tensor:
        """Per-sample kernel in the weight-image layout (B, Cout, k, Cin, k): the image (which already carries
        ``att_multi``) times the local, spatial, channel and filter attentions.

        Every weight-sized product runs on contiguous tensors of one layout (a transposing read is 10-40x
        slower than a contiguous one on the CPU), and the small factors are merged first: one activation, one
        product with the image and at most two broadcast products. Without autograd they run in place on
        ``image`` and ``local_logits``, which the caller hands over.
        """
        b, cout, cin, k = image.shape[0], self.out_channels, self.in_channels, self.kernel_size[0]
        dtype = image.dtype
        taps = self._tap_factor(spatial_att, channel_att, b, dtype)
        columns = None if taps is None else taps[:, None]  # (B, 1, k or 1, Cin or 1, k or 1)
        rows = None if filter_att is None else filter_att.to(dtype).view(b, cout, 1, 1, 1)
        tensors = (image, local_logits, spatial_att, channel_att, filter_att)
        in_place = not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
        weight = image.view(b, cout, k, cin, k)
        if local_logits is not None:
            logits = local_logits.to(dtype).view(b, cout, k, cin, k)
            sigmoid = self.ksm_local_act == "sigmoid"
            if in_place:
                weight = (logits.sigmoid_() if sigmoid else logits.tanh_().add_(1.0)).mul_(weight)
            else:
                weight = (torch.sigmoid(logits) if sigmoid else 1.0 + torch.tanh(logits)) * weight
        for factor in (columns, rows):
            if factor is not None:
                weight = weight.mul_(factor) if in_place else weight * factor
        return weight

    def _tap_factor(
        self, spatial_att: torch.Tensor | None, channel_att: torch.Tensor | None, b: int, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """The spatial and channel attentions merged into one factor over the kernel taps in the weight image's
        (u, i, v) order: (B, k or 1, Cin or 1, k or 1), or None without either."""
        k, factor = self.kernel_size[0], None
        for att, shape in ((spatial_att, (b, k, 1, k)), (channel_att, (b, 1, self.in_channels, 1))):
            if att is not None:
                att = att.to(dtype).view(shape)
                factor = att if factor is None else factor * att
        return factor

    def _samples_per_weight_chunk(self, x: torch.Tensor) -> int | None:
        """How many samples' weights to build at once (None: the whole batch).

        On the CPU, a batch of deep-layer weights is tens of MB of temporaries per step, which glibc maps fresh
        for every call (blocks over 32 MB always are), and faulting those pages in costs as much as the
        arithmetic; a few samples' buffers stay in cache and are reused (``into``). Measured at batch 8:
        inference 128/41 ms (512 channels) and 41/70 ms (256) per sample/whole batch; training (where autograd
        needs fresh buffers) 0.5/1.3 s (512) but 0.19/0.17 s (256), while peak memory of a ResNet-50 training
        step drops from 1486 to 1323 MiB when 256-channel layers go per sample too. So chunks of at most 2 MB of
        weights for inference (from 0.5 MB per sample), and of 4 MB for training once the batch's weights pass
        8 MB; never smaller than one sample, and no more chunks than needed (each costs a few dozen small ops,
        which dominate on tiny feature maps). Whole batches elsewhere (accelerators, compile, export).
        """
        if is_exporting() or torch.compiler.is_compiling() or x.device.type != "cpu":
            return None  # the whole batch (a symbolic batch size must not be looped over)
        per_sample = self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1] * 4  # bytes
        if torch.is_grad_enabled():
            chunk = None if x.shape[0] * per_sample <= 2**23 else max(1, 2**22 // per_sample)
        else:
            chunk = None if per_sample < 2**19 else max(1, 2**21 // per_sample)
        return None if chunk is None or chunk >= x.shape[0] else chunk

    def _per_sample_conv_method(self, x: torch.Tensor) -> str:
        """"im2col" (unfolded input times the weight image, batched matmul) or "grouped" (one convolution with B
        groups). im2col while exporting (ONNX needs a group count that does not depend on the dynamic batch) and
        on the CPU wherever the weight outsizes the output map (``Cout >= H'W'``): the matmul reads the weight in
        the layout it is generated in, while the convolution needs it transposed first (9.9 against 2.2 ms for
        one 512-channel 7x7 sample). The convolution elsewhere (accelerators, compile, shallow layers)."""
        if is_exporting():
            return "im2col"
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return "grouped"
        positions = math.prod(self._output_size(x.shape[-2:]))
        return "im2col" if self.out_channels >= positions else "grouped"

    def _output_size(self, size: Sequence[int]) -> tuple[int, int]:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            pads = self._reversed_padding_repeated_twice
            size, padding = (size[0] + pads[2] + pads[3], size[1] + pads[0] + pads[1]), (0, 0)
        else:
            padding = self.padding
        return tuple(  # type: ignore[return-value]
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(size, padding, self.dilation, self.kernel_size, self.stride)
        )

    def _per_sample_conv(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        method: str,
        spatial_att: torch.Tensor | None = None,
        channel_att: torch.Tensor | None = None,
        filter_att: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Convolve sample i of ``x`` (B, Cin, H, W) with ``weight[i]``, given in the weight-image layout
        (B, Cout, k, Cin, k); two formulations of the same sums (``_per_sample_conv_method``). im2col can also
        scale the kernel by separable attentions, applied to the unfolded input and the output."""
        b, cout, cin, k = x.shape[0], self.out_channels, self.in_channels, self.kernel_size[0]
        if method == "im2col":
            h_out, w_out = self._output_size(x.shape[-2:])
            padding = self.padding
            if self.padding_mode != "zeros" or isinstance(padding, str):  # also 'same' / 'valid'
                mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
                x, padding = F.pad(x, self._reversed_padding_repeated_twice, mode=mode), (0, 0)
            columns = F.unfold(x, self.kernel_size, self.dilation, padding, self.stride)  # (B, Cin*k*k, L), (i, u, v) order
            columns = columns.view(b, cin, k, k, -1).transpose(1, 2).contiguous()  # (B, k, Cin, k, L): the image's (u, i, v)
            taps = self._tap_factor(spatial_att, channel_att, b, columns.dtype)
            if taps is not None:
                columns = columns * taps[..., None]
            y = torch.bmm(weight.reshape(b, cout, -1), columns.view(b, k * cin * k, -1))
            if filter_att is not None:
                y = y * filter_att.to(y.dtype).view(b, cout, 1)
            return y.unflatten(2, (h_out, w_out))
        h, w = x.shape[-2:]
        kernel = weight.permute(0, 1, 3, 2, 4).reshape(b * cout, cin, k, k)
        y = self._conv(x.reshape(1, -1, h, w), kernel, groups=b)
        return y.view(b, cout, *y.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if not self.use_fdconv:
            if self.token_layout:
                return F.linear(x, self.weight, self.bias)
            return self._conv(x, self.weight, self.groups, self.bias)

        if self.token_layout:
            lead = x.shape[:-1]
            x = x.reshape(x.shape[0], -1, self.in_channels)
            pooled, positions = x.mean(1), x.shape[1]
        else:
            pooled, positions = x.mean((2, 3)), x.shape[2] * x.shape[3]
        b, cin, cout = x.shape[0], self.in_channels, self.out_channels

        if torch.is_autocast_enabled(x.device.type):  # small (B, Cin) work; half precision costs up to 8e-2 in the attentions
            with _float32_region(x.device.type):
                channel_att, filter_att, spatial_att, group_att = self.KSM_Global(pooled.float())
        else:
            channel_att, filter_att, spatial_att, group_att = self.KSM_Global(pooled)
        fold = self._fold_attention_into_weight(positions)
        if hasattr(self, "FBM"):
            x = self.FBM(x)
        if channel_att is not None and not fold:
            x = x * (channel_att.view(b, 1, cin) if self.token_layout else channel_att.view(b, cin, 1, 1)).to(x.dtype)
        with _float32_region(x.device.type):
            static = self._static_spectrum()  # once for the whole batch
        method = "matmul" if self.token_layout else self._per_sample_conv_method(x)
        inputs = (x, pooled, spatial_att, group_att, channel_att if fold else None, filter_att if fold else None)
        recompute = self.recompute_weight
        if recompute is None:  # per sample: weight Cout*Cin*k*k against input Cin*positions
            recompute = self.out_channels * self.kernel_size[0] * self.kernel_size[1] > positions
        recompute = recompute and torch.is_grad_enabled() and not is_exporting()
        chunk = self._samples_per_weight_chunk(x)
        parts = [inputs]
        if chunk is not None:
            parts = [tuple(None if t is None else t[i : i + chunk] for t in inputs) for i in range(0, b, chunk)]
        # Buffers reused across chunks without autograd, one set per chunk size (the last chunk may be smaller).
        workspaces: dict[int, dict[str, torch.Tensor]] | None = {} if len(parts) > 1 and not torch.is_grad_enabled() else None
        outputs = []
        for part in parts:
            if recompute:
                # Keep none of the per-sample weights for backward, recompute them there, a chunk at a time
                # (KSM_Global, with its BatchNorm statistics, stays outside and runs once).
                outputs.append(checkpoint(self._dynamic_conv, *part, *static, method, use_reentrant=False))
            else:
                workspace = None if workspaces is None else workspaces.setdefault(part[0].shape[0], {})
                outputs.append(self._dynamic_conv(*part, *static, method, workspace))
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if filter_att is not None and not fold:
            y = y * (filter_att.view(b, 1, cout) if self.token_layout else filter_att.view(b, cout, 1, 1)).to(y.dtype)
        if self.bias is not None:
            y = y + (self.bias if self.token_layout else self.bias.view(1, -1, 1, 1)).to(y.dtype)
        return y.reshape(*lead, cout) if self.token_layout else y

    def _dynamic_conv(
        self,
        x: torch.Tensor,
        pooled: torch.Tensor,
        spatial_att: torch.Tensor | None,
        group_att: torch.Tensor | None,
        channel_att: torch.Tensor | None,
        filter_att: torch.Tensor | None,
        real: torch.Tensor,
        imag: torch.Tensor,
        group_index: torch.Tensor,
        method: str,
        workspace: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Build the per-sample weights (local attention, spectrum, modulation) and apply them to ``x``.

        With im2col the separable attentions (spatial, and channel/filter when folded) scale the unfolded input
        and the output instead of the weight: the same products on tensors 10x smaller in deep layers.
        """
        b, cin, cout = x.shape[0], self.in_channels, self.out_channels
        attentions, none = (spatial_att, channel_att, filter_att), (None, None, None)
        on_weight, on_features = (none, attentions) if method == "im2col" else (attentions, none)
        with _float32_region(x.device.type):
            local_logits = self.KSM_Local(pooled, workspace) if hasattr(self, "KSM_Local") else None
            # att_multi, the local attention's constant factor, scales the spectrum (a scalar) instead of the weight.
            scale = self.att_multi if local_logits is not None and self.ksm_local_act == "sigmoid" else 1.0
            image = self._weight_image(real, imag, group_index, group_att, scale, workspace)
            weight = self._modulated_weight(image, local_logits, *on_weight)
        if not torch.is_autocast_enabled(x.device.type):
            weight = weight.to(x.dtype)
        if method == "matmul":  # token layout
            return torch.bmm(x, weight.reshape(b, cout, cin).transpose(1, 2))
        return self._per_sample_conv(x, weight, method, *on_features)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if self.use_fdconv and prefix + "weight" in state_dict and prefix + "dft_weight" not in state_dict:
            error_msgs.append(
                f"{prefix}weight is a plain convolution weight of shape {tuple(state_dict[prefix + 'weight'].shape)}, but "
                f"{prefix or 'this layer'} is an FDConv that stores its weight as {prefix}dft_weight: convert the checkpoint "
                "with fdconv_zoo.convert_state_dict(state_dict, model) (or build the layer with FDConv.from_conv)"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.token_layout:
            s += ", token_layout=True"
        if not self.use_fdconv:
            return s + ", use_fdconv=False"
        return s + f", kernel_num={self.kernel_num}" + (f", param_ratio={self.param_ratio}" if self.param_ratio != 1 else "")
