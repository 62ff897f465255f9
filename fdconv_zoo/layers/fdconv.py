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
(FBM, with ``band_masks`` and ``band_split``), ``execution`` (the plan of a forward), ``eager_forward`` (the CPU and
export plans), ``batched_forward`` (accelerators and compiled graphs: a fixed handful of batched ops) and
``per_sample_conv``; this module composes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .band_modulation import FrequencyBandModulation
from .batched_forward import batched_forward
from .conv_geometry import conv_nd, normalised_conv_args
from .eager_forward import eager_forward
from .execution import ExecutionPlan, plan_execution
from .fdconv_args import check_fdconv_args, check_input, check_token_layout, fbm_config, kernel_in, uses_fdconv
from .fourier_weight import (
    conv_weight_to_spectrum,
    image_shape,
    image_to_conv_weight,
    static_spectrum,
    weight_image,
)
from .frequency_groups import frequency_group_map
from .kernel_modulation import (
    KernelSpatialModulationGlobal,
    KernelSpatialModulationLocal,
)
from .plain_conv import convert_plain_layer, plain_weight_error

__all__ = ["FDConv"]


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
        if plan.batched:
            return batched_forward(self, x, plan)
        return eager_forward(self, x, plan)

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
