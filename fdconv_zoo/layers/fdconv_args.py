"""FDConv's official keyword arguments: their defaults, what this implementation supports, one validation.

The names and defaults are the official ones, so configs written for the official layer work unchanged;
unsupported values are refused with a reason instead of being ignored (the official layer swallows unknown
``fbm_cfg`` keys, for example).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "DEFAULT_FBM_CFG",
    "check_fdconv_args",
    "check_input",
    "check_token_layout",
    "fbm_config",
    "kernel_in",
    "uses_fdconv",
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
_FBM_KEYS = set(DEFAULT_FBM_CFG) | {"max_size", "exact_masks"}
_ACTIVATIONS = ("sigmoid", "tanh")


def kernel_in(kernel_size: tuple[int, ...], sizes: Sequence[int | Sequence[int]]) -> bool:
    """Whether ``kernel_size`` is listed in ``sizes``: an int ``k`` stands for the kernel with every side ``k``
    (k, k x k, k x k x k), a tuple for exactly that kernel (e.g. ``(3, 1)``)."""
    return any(tuple(kernel_size) == (tuple(s) if isinstance(s, Sequence) else (s,) * len(kernel_size)) for s in sizes)


def uses_fdconv(
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, ...],
    use_fdconv_if_c_gt: int,
    use_fdconv_if_k_in: Sequence[int | Sequence[int]],
) -> bool:
    """The official rule: narrow layers and unlisted kernel sizes stay plain convolutions.

    The official layer reads only the first side of a kernel, so it takes e.g. a (3, 1) kernel for a 3x3 one and
    then fails; such a kernel is refused unless listed itself, so that a config never silently changes meaning.
    """
    if min(in_channels, out_channels) <= use_fdconv_if_c_gt:
        return False
    if kernel_in(kernel_size, use_fdconv_if_k_in):
        return True
    if len(set(kernel_size)) > 1 and kernel_size[0] in use_fdconv_if_k_in:
        raise ValueError(
            f"kernel_size={kernel_size}: use_fdconv_if_k_in={list(use_fdconv_if_k_in)} lists kernels by side, which the "
            f"official layer checks on the first side only; to make this non-square kernel an FDConv list it: "
            f"use_fdconv_if_k_in=[..., {kernel_size}] (or raise use_fdconv_if_c_gt to keep it a plain convolution)"
        )
    return False


def check_fdconv_args(
    *,
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
        (
            groups != 1,
            f"groups={groups}: FDConv layers must have groups=1 (raise use_fdconv_if_c_gt or keep this layer an nn.Conv2d)",
        ),
        (kernel_num < 1, f"kernel_num must be >= 1, got {kernel_num}"),
        (param_reduction != 1, "param_reduction != 1 is not supported (the official layer drops its scale there)"),
        (not convert_param, "convert_param=False is not supported; the weight is always stored as dft_weight"),
        (spatial_freq_decompose, "spatial_freq_decompose=True is not supported (the official forward crashes with it)"),
        (
            ksm_global_act not in (*_ACTIVATIONS, "softmax")
            or (ksm_global_act == "softmax" and not ksm_only_kernel_att),
            f"ksm_global_act={ksm_global_act!r}: use 'sigmoid' or 'tanh' ('softmax' only with ksm_only_kernel_att=True)",
        ),
        (ksm_local_act not in _ACTIVATIONS, f"ksm_local_act={ksm_local_act!r}: use 'sigmoid' or 'tanh'"),
        (
            int(param_ratio) != param_ratio or param_ratio < 1,
            f"param_ratio must be a positive integer, got {param_ratio}",
        ),
    ]
    errors = [message for bad, message in problems if bad]
    if errors:
        raise ValueError("invalid FDConv arguments: " + "; ".join(errors))


def fbm_config(fbm_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """``fbm_cfg`` merged over the official defaults, with unknown keys and unsupported values refused; returns
    the ``FrequencyBandModulation`` arguments it sets."""
    cfg = {**DEFAULT_FBM_CFG, **(fbm_cfg or {})}
    unknown = set(cfg) - _FBM_KEYS
    if unknown:
        raise ValueError(f"unknown fbm_cfg keys {sorted(unknown)}; valid keys: {sorted(_FBM_KEYS)}")
    if cfg["spatial"] != "conv":
        raise ValueError(
            f"fbm_cfg spatial={cfg['spatial']!r} is not supported; the official layer implements 'conv' only"
        )
    if tuple(cfg.get("max_size", (64, 64))) != (64, 64):
        raise ValueError("fbm_cfg max_size other than (64, 64) is not supported (the official layer never sets it)")
    module_args = {
        name: cfg[name] for name in ("k_list", "lowfreq_att", "act", "spatial_group", "spatial_kernel", "init")
    }
    return {**module_args, "exact_masks": cfg.get("exact_masks", False)}


def check_token_layout(
    token_layout: bool,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...] | str,
    groups: int,
) -> bool:
    """``token_layout``, refused for any geometry but a 1x1 layer's (the token layout is its ``nn.Linear`` form)."""
    ones, zeros = (1,) * len(kernel_size), (0,) * len(kernel_size)
    if token_layout and (kernel_size != ones or stride != ones or padding not in (zeros, "valid") or groups != 1):
        raise ValueError(
            "token_layout=True is the nn.Linear form of FDConv: it needs kernel_size=1, stride=1, padding=0 "
            f"and groups=1, got kernel_size={kernel_size}, stride={stride}, padding={padding}, groups={groups}"
        )
    return token_layout


_LAYOUTS = {1: "an NCL input (B, {c}, L)", 2: "an NCHW input (B, {c}, H, W)", 3: "an NCDHW input (B, {c}, D, H, W)"}


def check_input(
    x: torch.Tensor, in_channels: int, token_layout: bool, spatial_dims: int = 2, layer: str = "FDConv"
) -> None:
    """A named error for inputs the layer cannot take (dtype, rank, channel count)."""
    if not x.is_floating_point():
        raise TypeError(f"{layer} expects a floating-point input, got dtype {x.dtype}")
    if token_layout:
        if x.dim() < 2 or x.shape[-1] != in_channels:
            raise ValueError(
                f"{layer} (token layout) expects a (B, ..., {in_channels}) input with channels last, got shape {tuple(x.shape)}"
            )
    elif x.dim() != spatial_dims + 2 or x.shape[1] != in_channels:
        others = [
            f"{name} for {n + 2}-D inputs"
            for n, name in ((1, "FDConv1d"), (2, "FDConv"), (3, "FDConv3d"))
            if n != spatial_dims and x.dim() == n + 2
        ]
        raise ValueError(
            f"{layer} expects {_LAYOUTS[spatial_dims].format(c=in_channels)}, got shape {tuple(x.shape)}"
            + (
                "; for (B, ..., C) tensors build the layer with token_layout=True"
                if x.dim() != spatial_dims + 2
                else ""
            )
            + (f" (use {others[0]})" if others else "")
        )
