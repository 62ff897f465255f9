"""FDConv's official keyword arguments: their defaults, what this implementation supports, one validation.

The names and defaults are the official ones, so configs written for the official layer work unchanged;
unsupported values are refused with a reason instead of being ignored (the official layer swallows unknown
``fbm_cfg`` keys, for example).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["DEFAULT_FBM_CFG", "check_fdconv_args", "check_input", "fbm_config", "uses_fdconv"]

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
_FBM_KEYS = set(DEFAULT_FBM_CFG) | {"max_size", "exact_masks"}
_ACTIVATIONS = ("sigmoid", "tanh")


def uses_fdconv(in_channels: int, out_channels: int, kernel_size: tuple[int, ...], use_fdconv_if_c_gt: int, use_fdconv_if_k_in: Sequence[int]) -> bool:
    """The official rule: narrow layers and other kernel sizes stay plain convolutions."""
    return min(in_channels, out_channels) > use_fdconv_if_c_gt and kernel_size[0] in use_fdconv_if_k_in


def check_fdconv_args(
    *,
    kernel_size: tuple[int, ...],
    groups: int,
    kernel_num: int,
    param_reduction: float,
    convert_param: bool,
    spatial_freq_decompose: bool,
    ksm_global_act: str,
    ksm_only_kernel_att: bool,
    ksm_local_act: str,
    param_ratio: int,
) -> None:
    """Raise one ValueError naming every unsupported argument of a layer that uses FDConv."""
    problems = [
        (kernel_size[0] != kernel_size[1], f"kernel_size={kernel_size}: FDConv layers need a square kernel"),
        (groups != 1, f"groups={groups}: FDConv layers must have groups=1 (raise use_fdconv_if_c_gt or keep this layer an nn.Conv2d)"),
        (kernel_num < 1, f"kernel_num must be >= 1, got {kernel_num}"),
        (param_reduction != 1, "param_reduction != 1 is not supported (the official layer drops its scale there)"),
        (not convert_param, "convert_param=False is not supported; the weight is always stored as dft_weight"),
        (spatial_freq_decompose, "spatial_freq_decompose=True is not supported (the official forward crashes with it)"),
        (
            ksm_global_act not in (*_ACTIVATIONS, "softmax") or (ksm_global_act == "softmax" and not ksm_only_kernel_att),
            f"ksm_global_act={ksm_global_act!r}: use 'sigmoid' or 'tanh' ('softmax' only with ksm_only_kernel_att=True)",
        ),
        (ksm_local_act not in _ACTIVATIONS, f"ksm_local_act={ksm_local_act!r}: use 'sigmoid' or 'tanh'"),
        (int(param_ratio) != param_ratio or param_ratio < 1, f"param_ratio must be a positive integer, got {param_ratio}"),
    ]
    errors = [message for bad, message in problems if bad]
    if errors:
        raise ValueError("invalid FDConv arguments: " + "; ".join(errors))


def fbm_config(fbm_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """``fbm_cfg`` merged over the official defaults, with unknown keys and unsupported values refused."""
    cfg = {**DEFAULT_FBM_CFG, **(fbm_cfg or {})}
    unknown = set(cfg) - _FBM_KEYS
    if unknown:
        raise ValueError(f"unknown fbm_cfg keys {sorted(unknown)}; valid keys: {sorted(_FBM_KEYS)}")
    if cfg["spatial"] != "conv":
        raise ValueError(f"fbm_cfg spatial={cfg['spatial']!r} is not supported; the official layer implements 'conv' only")
    if tuple(cfg.get("max_size", (64, 64))) != (64, 64):
        raise ValueError("fbm_cfg max_size other than (64, 64) is not supported (the official layer never sets it)")
    return cfg


def check_input(x: torch.Tensor, in_channels: int, token_layout: bool) -> None:
    """A named error for inputs the layer cannot take (dtype, rank, channel count)."""
    if not x.is_floating_point():
        raise TypeError(f"FDConv expects a floating-point input, got dtype {x.dtype}")
    if token_layout:
        if x.dim() < 2 or x.shape[-1] != in_channels:
            raise ValueError(f"FDConv (token layout) expects a (B, ..., {in_channels}) input with channels last, got shape {tuple(x.shape)}")
    elif x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"FDConv expects an NCHW input (B, {in_channels}, H, W), got shape {tuple(x.shape)}"
            + ("; for (B, ..., C) tensors build the layer with token_layout=True" if x.dim() != 4 else "")
        )
