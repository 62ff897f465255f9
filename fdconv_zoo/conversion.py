"""Conversion of whole state dicts from plain models to FDConv models.

The per-layer weight conversion (``conv_weight_to_spectrum`` / ``spectrum_to_conv_weight``) lives with the layer
in :mod:`fdconv_zoo.layers.fourier_weight` and is re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn as nn

from .layers import FDConv, conv_weight_to_spectrum, spectrum_to_conv_weight

__all__ = ["conv_weight_to_spectrum", "spectrum_to_conv_weight", "convert_state_dict"]

_logger = logging.getLogger(__name__)


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, *, fill_missing: bool = True
) -> dict[str, torch.Tensor]:
    """Convert a plain model's state dict for ``model``, a network containing FDConv layers.

    For every real FDConv layer ``name`` in ``model`` (``FDConv``, ``FDConv1d``, ``FDConv3d``), ``name.weight``
    (conv of the layer's rank, or linear) becomes ``name.dft_weight``. With ``fill_missing`` the attention parameters and buffers the source cannot
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
                raise ValueError(
                    f"{weight_key}: shape {tuple(weight.shape)} does not match the model, which expects {expected}"
                )
            out[dft_key] = conv_weight_to_spectrum(
                weight.reshape(expected).to(module.dft_weight.dtype), module.param_ratio
            )
            converted += 1
        if fill_missing:
            for key in own_state:
                if (
                    key.startswith(prefix)
                    and key[len(prefix) :].split(".")[0] in ("KSM_Global", "KSM_Local", "FBM")
                    and key not in out
                ):
                    out[key] = own_state[key]
    _logger.debug("converted %d conv weights to FDConv spectra", converted)
    return out
