"""Exact conversion between plain convolution weights and FDConv's Fourier-domain ``dft_weight``.

The layout is the official one (FDCONV_SPEC §4.1): the (Cout, Cin, k, k) weight is laid out as a
(Cout*k, Cin*k) "weight image", transformed with ``rfft2``, stored as (real, imag) pairs and divided by
``min(Cout, Cin) // 2``. With ``param_ratio = P`` copies, each copy holds 1/P of the spectrum so that
the neutral layer equals the source conv (the official converter repeats the full spectrum, giving P*W).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn as nn

from .layers.fdconv import FDConv
from .layers.frequency import inverse_weight_spectrum

__all__ = ["conv_weight_to_spectrum", "spectrum_to_conv_weight", "convert_state_dict"]

_logger = logging.getLogger(__name__)


def _as_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() == 2:  # nn.Linear (out, in): a 1x1 convolution
        return weight[:, :, None, None]
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"expected a (Cout, Cin, k, k) conv or (out, in) linear weight with a square kernel, got shape {tuple(weight.shape)}")
    return weight


def conv_weight_to_spectrum(weight: torch.Tensor, param_ratio: int = 1) -> torch.Tensor:
    """``dft_weight`` (P, Cout*k, Cin*k//2+1, 2) of a conv weight (Cout, Cin, k, k) or linear weight (out, in).

    Computed in float64 and returned in the weight's dtype, so the round trip is exact to float32 rounding.
    """
    w = _as_conv_weight(weight)
    cout, cin, k, _ = w.shape
    image = w.double().permute(0, 2, 1, 3).reshape(cout * k, cin * k)
    spectrum = torch.view_as_real(torch.fft.rfft2(image)) / (min(cout, cin) // 2) / param_ratio
    return spectrum.to(weight.dtype).unsqueeze(0).repeat(param_ratio, 1, 1, 1)


def spectrum_to_conv_weight(dft_weight: torch.Tensor, in_channels: int, kernel_size: int = 1) -> torch.Tensor:
    """Inverse of :func:`conv_weight_to_spectrum`: the static conv weight (Cout, Cin, k, k) an FDConv holds.

    Sums the P copies, so for an official ``param_ratio > 1`` checkpoint this is the weight the layer
    uses at neutral attention.
    """
    if dft_weight.dim() != 4 or dft_weight.shape[-1] != 2:
        raise ValueError(f"expected a dft_weight of shape (P, Cout*k, Cin*k//2+1, 2), got {tuple(dft_weight.shape)}")
    k = kernel_size
    rows, cols = dft_weight.shape[1], in_channels * k
    if rows % k or dft_weight.shape[2] != cols // 2 + 1:
        raise ValueError(f"dft_weight of shape {tuple(dft_weight.shape)} does not fit in_channels={in_channels}, kernel_size={k}")
    cout = rows // k
    spectrum = dft_weight.double().sum(0) * (min(cout, in_channels) // 2)  # a fresh tensor
    image = inverse_weight_spectrum(spectrum, cols)
    return image.view(cout, k, in_channels, k).transpose(1, 2).to(dft_weight.dtype)


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module, *, fill_missing: bool = True) -> dict[str, torch.Tensor]:
    """Convert a plain model's state dict for ``model``, a network containing FDConv layers.

    For every real FDConv layer ``name`` in ``model``, ``name.weight`` (conv or linear) becomes
    ``name.dft_weight``. With ``fill_missing`` the attention parameters and buffers the source cannot
    have (``KSM_Global``, ``KSM_Local``, ``FBM``) are taken from ``model``, whose freshly built layers are
    neutral, so the converted model computes the source's function. Already converted layers (official
    ``tools/convert_to_fdconv.py`` output, or our own checkpoints) pass through. Returns a new dict.
    """
    out = dict(state_dict)
    own_state = model.state_dict()
    converted = 0
    for name, module in model.named_modules():
        if not isinstance(module, FDConv) or not module.use_fdconv:
            continue
        prefix = f"{name}." if name else ""
        weight_key, dft_key = prefix + "weight", prefix + "dft_weight"
        if weight_key in out and dft_key not in out:
            weight = out.pop(weight_key)
            expected = module.conv_weight_shape
            if not module.accepts_conv_weight(weight.shape):
                raise ValueError(f"{weight_key}: shape {tuple(weight.shape)} does not match the model, which expects {expected}")
            out[dft_key] = conv_weight_to_spectrum(weight.reshape(expected).to(module.dft_weight.dtype), module.param_ratio)
            converted += 1
        if fill_missing:
            for key in own_state:
                if key.startswith(prefix) and key[len(prefix):].split(".")[0] in ("KSM_Global", "KSM_Local", "FBM") and key not in out:
                    out[key] = own_state[key]
    _logger.debug("converted %d conv weights to FDConv spectra", converted)
    return out
