"""FDConv: Frequency Dynamic Convolution (Chen et al., CVPR 2025, arXiv 2503.18783).

A re-implementation of the official layer that computes the same function and loads its state dicts
unchanged (parameter names ``dft_weight``, ``KSM_Global.*``, ``KSM_Local.*``, ``FBM.*``, ``bias``; a layer
that falls back to a plain convolution has ``weight``/``bias``). Differences from the official code, all
outside the function of trained layers: every attention head starts at zero so a converted layer is
exactly its source convolution; batch size 1 trains and an empty batch gives an empty output; the frequency
grouping does not depend on the CPU's SIMD level; ``padding_mode`` is honoured; ``kernel_num`` need not divide
the number of bins; the layer also runs on ``(B, ..., C)`` token tensors as a drop-in for ``nn.Linear``; beyond the
paper, kernels need not be square and the layer is generic over the number of spatial dimensions (``FDConv1d``,
``FDConv3d`` in ``fdconv_nd``): a (k1, ..., kn) kernel's weight image is (Cout*k1, Cin*k2*...*kn).

The parts live beside this file: ``fourier_weight`` (FDW), ``kernel_modulation`` (KSM), ``band_modulation``
(FBM), ``execution`` (how a forward runs) and ``per_sample_conv``; this module composes them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .band_modulation import FrequencyBandModulation
from .conv_geometry import conv_nd, normalised_conv_args
from .execution import ConvMethod, ExecutionPlan, Workspace, float32_region, plan_execution
from .fdconv_args import check_fdconv_args, check_input, check_token_layout, fbm_config, kernel_in, uses_fdconv
from .fourier_weight import (
    WeightSpectrum,
    conv_weight_to_spectrum,
    image_shape,
    image_to_conv_weight,
    static_spectrum,
    weight_image,
)
from .frequency_groups import frequency_group_map
from .kernel_modulation import (
    KernelAttentions,
    KernelSpatialModulationGlobal,
    KernelSpatialModulationLocal,
    modulate_weight,
)
from .per_sample_conv import per_sample_conv
from .plain_conv import convert_plain_layer, plain_weight_error

__all__ = ["FDConv"]


def _feature_view(channels: torch.Tensor, token_layout: bool, spatial_dims: int) -> torch.Tensor:
    """(..., C) per-channel factors (attentions, bias) shaped to scale features: (..., 1, C) tokens or
    (..., C, 1, ...) maps."""
    return channels[..., None, :] if token_layout else channels[(..., *(None,) * spatial_dims)]


def _position_mean(x: torch.Tensor, token_layout: bool) -> torch.Tensor:
    """(B, C): ``x`` averaged over its positions, as ``mean`` computes it (a sum divided by their number).

    Written as that sum so that backward hands the input an expanded view of the pooled gradient: ``mean``'s
    backward divides it into a fresh input-sized tensor, one more pass and allocation per layer (at 512x512,
    batch 2, a 32 MiB tensor for each of ResNet-50's first-stage layers)."""
    dims = (1,) if token_layout else tuple(range(2, x.dim()))
    return x.sum(dims) / math.prod([x.shape[d] for d in dims])  # a list: torch.compile cannot trace a generator here


class FDConv(nn.Module):
    """Frequency Dynamic Convolution, a drop-in replacement for ``nn.Conv2d`` (or ``nn.Linear``).

    The weight is stored as the 2-D Fourier spectrum of its weight image (``dft_weight``), split into
    ``kernel_num`` disjoint frequency groups; per sample, group attentions (Fourier Disjoint Weights),
    channel/filter/spatial and per-element attentions (Kernel Spatial Modulation) and a band-wise re-weighting
    of the input (Frequency Band Modulation, 3x3 layers) make the convolution input-dependent.

    Arguments are those of ``nn.Conv2d`` followed by the official FDConv keyword arguments (same names and
    defaults). Extra keywords: ``token_layout=True`` makes a 1x1 layer act on ``(B, ..., C)`` tensors like
    ``nn.Linear`` (all middle axes are positions); ``fbm_cfg`` also accepts ``exact_masks=True`` (band masks
    computed at the true input size instead of resized from 64x64); ``recompute_weight`` decides whether the
    per-sample weights are kept for backward (False: fastest training step) or recomputed there (True: no
    weight-sized tensor is kept); the default recomputes them where they outsize the layer's input.

    Layers with ``min(in, out) <= use_fdconv_if_c_gt`` or a kernel size outside ``use_fdconv_if_k_in``
    are plain convolutions (``use_fdconv`` is False), exactly like the official layer. In ``use_fdconv_if_k_in``
    and ``use_fbm_if_k_in`` an int ``k`` stands for the k x k kernel, a tuple such as ``(3, 1)`` for itself.
    """

    spatial_dims: ClassVar[int] = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        reduction: float = 0.0625,
        kernel_num: int | None = 4,
        use_fdconv_if_c_gt: int = 16,
        use_fdconv_if_k_in: Sequence[int | Sequence[int]] = (1, 3),
        use_fdconv_if_stride_in: Sequence[int] = (1,),
        use_fbm_if_k_in: Sequence[int | Sequence[int]] = (3,),
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
        geometry = normalised_conv_args(
            self.spatial_dims,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            False,
            padding_mode,
        )
        for name, value in geometry.items():  # nn.Conv{n}d's attributes, normalised
            setattr(self, name, value)
        self.token_layout = check_token_layout(token_layout, self.kernel_size, self.stride, self.padding, groups)
        self.recompute_weight = recompute_weight
        self.use_fdconv = uses_fdconv(
            in_channels, out_channels, self.kernel_size, use_fdconv_if_c_gt, use_fdconv_if_k_in
        )
        self.use_fdconv_if_stride_in = list(
            use_fdconv_if_stride_in
        )  # kept for config parity; never checked (as official)
        if not self.use_fdconv:
            self.weight = nn.Parameter(
                torch.empty((out_channels, in_channels) if token_layout else self.conv_weight_shape, **dd)
            )
        self.bias = nn.Parameter(torch.empty(out_channels, **dd)) if bias else None
        if not self.use_fdconv:
            self.reset_parameters()
            return
        if kernel_num is None:  # the official "one group per output pair" setting
            kernel_num = out_channels // 2
            kernel_temp = math.sqrt(kernel_num * param_ratio)
        check_fdconv_args(
            groups=groups,
            kernel_num=kernel_num,
            param_reduction=param_reduction,
            convert_param=convert_param,
            spatial_freq_decompose=spatial_freq_decompose,
            ksm_global_act=ksm_global_act,
            ksm_only_kernel_att=ksm_only_kernel_att,
            ksm_local_act=ksm_local_act,
            param_ratio=param_ratio,
        )
        fbm_args = fbm_config(fbm_cfg)
        self.kernel_num, self.param_ratio = kernel_num, param_ratio
        self.kernel_temp, self.temp, self.att_multi = kernel_temp, kernel_temp if temp is None else temp, att_multi
        self.ksm_local_act = ksm_local_act
        self.alpha = (min(in_channels, out_channels) // 2) * kernel_num * param_ratio
        rows, n2 = self.weight_image_shape[0], self.weight_image_shape[1] // 2 + 1
        self.dft_weight = nn.Parameter(torch.empty(param_ratio, rows, n2, 2, **dd))
        self.KSM_Global = KernelSpatialModulationGlobal(
            in_channels,
            out_channels,
            self.kernel_size,
            max(int(in_channels * reduction), 16),
            kernel_num * param_ratio,
            temp=self.temp,
            kernel_temp=kernel_temp,
            att_multi=att_multi,
            act=ksm_global_act,
            only_kernel_att=ksm_only_kernel_att,
            **dd,
        )
        if kernel_in(self.kernel_size, use_fbm_if_k_in) or (use_fbm_for_stride and self.stride[0] > 1):
            self.FBM = FrequencyBandModulation(in_channels, **fbm_args, spatial_dims=self.spatial_dims, **dd)
        if use_ksm_local:
            self.KSM_Local = KernelSpatialModulationLocal(
                in_channels, out_channels * math.prod(self.kernel_size), self.kernel_size, **dd
            )
        self.register_buffer(
            "frequency_group", torch.empty(rows, n2, dtype=torch.int32, device=device), persistent=False
        )
        self.init_non_persistent_buffers()
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------ init
    def init_non_persistent_buffers(self) -> None:
        """(Re)compute the frequency group map; call after meta-device materialisation (timm convention)."""
        self._frequency_group_ready = self.use_fdconv and not self.frequency_group.is_meta
        if self._frequency_group_ready:
            groups = frequency_group_map(*self.weight_image_shape, self.kernel_num)
            self.frequency_group = groups.to(self.frequency_group.device)

    def reset_parameters(self) -> None:
        """nn.Conv{n}d's default weight and bias (converted to the spectrum), attentions neutral."""
        if not self.use_fdconv:
            nn.Conv2d.reset_parameters(self)  # kaiming-uniform weight and fan-in bias, as nn.Conv1d/2d/3d/nn.Linear
            return
        with torch.no_grad():
            self.dft_weight.copy_(self.default_spectrum())
        self.reset_bias()
        self.reset_attention()

    def reset_bias(self) -> None:
        """nn.Conv{n}d's fan-in uniform bias init."""
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels // self.groups * math.prod(self.kernel_size))
            nn.init.uniform_(self.bias, -bound, bound)

    def default_spectrum(self) -> torch.Tensor:
        """Spectrum of a freshly initialised nn.Conv{n}d weight (kaiming-uniform, a=sqrt(5)), as the official init;
        separate so guarded initialisers (transformers' ``init.copy_``) can set it without re-drawing loaded tensors."""
        weight = torch.empty(self.conv_weight_shape, device=self.dft_weight.device, dtype=self.dft_weight.dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        return conv_weight_to_spectrum(weight, self.param_ratio)

    def reset_attention(self) -> None:
        """Make every attention neutral (exactly 1, group attention 1/groups): the layer is then its static conv."""
        for name in ("KSM_Global", "FBM", "KSM_Local"):
            if hasattr(self, name):
                getattr(self, name).reset_parameters()

    # ---------------------------------------------------------------------------- plain conversions
    @classmethod
    def from_conv(cls, module: nn.Conv2d | nn.Linear, **fdconv_kwargs: Any) -> FDConv:
        """An FDConv computing exactly ``module``'s function (attentions neutral), its weight converted.

        ``nn.Linear`` gives a token-layout 1x1 FDConv for ``(B, ..., C)`` inputs. The FDConv keyword arguments
        (e.g. ``kernel_num=64``) are passed through; parameters keep the source's device, dtype and
        ``requires_grad``.
        """
        return convert_plain_layer(cls, module, **fdconv_kwargs)

    @torch.no_grad()
    def load_conv_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Set the static weight from a plain conv (or linear) weight; attentions are left as they are."""
        if not self.accepts_conv_weight(weight.shape):
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} does not fit this layer; expected {self.conv_weight_shape}"
            )
        if (bias is None) != (self.bias is None):
            raise ValueError(
                f"bias mismatch: the layer {'has' if self.bias is not None else 'has no'} bias, the source {'has none' if bias is None else 'has one'}"
            )
        if self.use_fdconv:
            self.dft_weight.copy_(conv_weight_to_spectrum(weight.reshape(self.conv_weight_shape), self.param_ratio))
        else:
            self.weight.copy_(weight.reshape(self.weight.shape))
        if bias is not None:
            self.bias.copy_(bias)

    @property
    def conv_weight_shape(self) -> tuple[int, ...]:
        """Shape of the equivalent static ``nn.Conv{n}d`` weight."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def weight_image_shape(self) -> tuple[int, int]:
        """(rows, cols) of the weight image whose spectrum ``dft_weight`` stores: (Cout*k1, Cin*k2*...*kn)."""
        return image_shape(self.out_channels, self.in_channels, self.kernel_size)

    def accepts_conv_weight(self, shape: Sequence[int]) -> bool:
        """Whether a plain weight of ``shape`` converts into this layer: the conv weight, or (out, in) of an
        ``nn.Linear`` for a 1x1 layer."""
        expected = self.conv_weight_shape
        return tuple(shape) == expected or (math.prod(self.kernel_size) == 1 and tuple(shape) == expected[:2])

    @property
    def in_features(self) -> int:  # nn.Linear-style aliases, so the token-layout form is a drop-in for nn.Linear
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    # ---------------------------------------------------------------------------------------- forward
    def spectral_weight(self, group_attention: torch.Tensor | None, scale: float = 1.0) -> torch.Tensor:
        """Per-sample weight images (B, rows, cols) for the group attentions, times ``scale``: for a square kernel
        ``image[b, o*k+u, i*k+v]`` is kernel entry ``[o, i, u, v]``. Float32 (float64 parameters: float64);
        callers disable autocast."""
        spectrum = static_spectrum(self.dft_weight, self.frequency_group, copy_planes=False)
        return weight_image(
            spectrum,
            group_attention,
            kernel_num=self.kernel_num,
            scale=self.alpha * scale,
            cols=self.weight_image_shape[1],
        )

    def forward(self, x: torch.Tensor, plan: ExecutionPlan | None = None) -> torch.Tensor:
        """``plan`` (default: :func:`~.execution.plan_execution`) picks how, never what, the layer computes."""
        check_input(x, self.in_channels, self.token_layout, self.spatial_dims, type(self).__name__)
        if not self.use_fdconv:
            return (
                F.linear(x, self.weight, self.bias)
                if self.token_layout
                else conv_nd(x, self.weight, self, self.groups, self.bias)
            )
        if x.shape[0] == 0:
            return self._static_forward(x)
        if not self._frequency_group_ready:  # materialised from "meta" by a framework that never called the init
            self.init_non_persistent_buffers()
        plan = plan_execution(self, x) if plan is None else plan
        lead = x.shape[:-1]
        if self.token_layout:
            x = x.reshape(
                x.shape[0], math.prod(x.shape[1:-1]), self.in_channels
            )  # explicit sizes: batch 0 under export
        pooled = _position_mean(x, self.token_layout)
        # Under autocast the small (B, Cin) attention work runs in float32: half precision costs visible accuracy.
        with float32_region(x.device.type, plan.exporting) if plan.float32_attention else contextlib.nullcontext():
            attentions = self.KSM_Global(pooled.float() if plan.float32_attention else pooled)
        if hasattr(self, "FBM"):
            x = self.FBM(
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
                x = x * _feature_view(attentions.channel, self.token_layout, self.spatial_dims).to(x.dtype)
            attentions = attentions._replace(channel=None, filter=None)
        with float32_region(x.device.type, plan.exporting):
            # Once per batch; separate planes only where the products run on them (the CPU multiplies complex pairs).
            spectrum = static_spectrum(
                self.dft_weight, self.frequency_group, copy_planes=plan.in_place and not plan.fft_reads_hermitian_part
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
            args = (*chunk, spectrum, None if filter_on_output else self.bias, plan)
            if plan.recompute:
                # Keep none of the per-sample weights for backward, recompute them there, a chunk at a time
                # (KSM_Global, with its BatchNorm statistics, stays outside and runs once).
                outputs.append(checkpoint(self._dynamic_conv, *args, use_reentrant=False))
            else:
                workspace = workspaces.setdefault(args[0].shape[0], {}) if plan.reuses_buffers else None
                outputs.append(self._dynamic_conv(*args, workspace))
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if filter_on_output:
            factor = _feature_view(filt, self.token_layout, self.spatial_dims).to(y.dtype)
            if self.bias is None:
                y = y * factor
            else:
                bias = self.bias if self.token_layout else _feature_view(self.bias, False, self.spatial_dims)
                y = torch.addcmul(bias.to(y.dtype), y, factor)
        return y.reshape(*lead, self.out_channels) if self.token_layout else y

    def _dynamic_conv(
        self,
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
            local_logits = self.KSM_Local(pooled, workspace) if hasattr(self, "KSM_Local") else None
            # att_multi, the local attention's constant factor, scales the spectrum (a scalar) instead of the weight.
            scale = self.att_multi if local_logits is not None and self.ksm_local_act == "sigmoid" else 1.0
            image = weight_image(
                spectrum,
                attentions.group,
                kernel_num=self.kernel_num,
                scale=self.alpha * scale,
                cols=self.weight_image_shape[1],
                workspace=workspace,
                exportable=plan.exporting,
                in_place=plan.in_place,
                reads_hermitian_part=plan.fft_reads_hermitian_part,
            )
            weight = modulate_weight(
                image, local_logits, on_weight, self.kernel_size, local_act=self.ksm_local_act, in_place=plan.in_place
            )
        if not plan.float32_attention:  # under autocast the convolution itself casts the float32 weight
            weight = weight.to(x.dtype)
        return per_sample_conv(x, weight, self, plan.method, on_features, bias)

    def _static_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution with the stored (neutral-attention) weight, for an empty batch: it has no per-sample
        weights, and its output keeps the right shape and stays connected to the parameters."""
        weight = image_to_conv_weight(self.spectral_weight(None)[0], self.in_channels, self.kernel_size).to(x.dtype)
        if self.token_layout:
            return F.linear(x, weight.reshape(self.out_channels, self.in_channels), self.bias)
        return conv_nd(x, weight, self, 1, self.bias)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        if self.use_fdconv and prefix + "weight" in state_dict and prefix + "dft_weight" not in state_dict:
            error_msgs.append(plain_weight_error(prefix, tuple(state_dict[prefix + "weight"].shape)))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += f", padding={self.padding}" if self.padding not in ((0,) * self.spatial_dims, "valid") else ""
        s += f", dilation={self.dilation}" if self.dilation != (1,) * self.spatial_dims else ""
        s += f", groups={self.groups}" if self.groups != 1 else ""
        s += ", bias=False" if self.bias is None else ""
        s += f", padding_mode={self.padding_mode!r}" if self.padding_mode != "zeros" else ""
        s += ", token_layout=True" if self.token_layout else ""
        if not self.use_fdconv:
            return s + ", use_fdconv=False"
        return (
            s
            + f", kernel_num={self.kernel_num}"
            + (f", param_ratio={self.param_ratio}" if self.param_ratio != 1 else "")
        )
