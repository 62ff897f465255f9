"""FDConv layers made from plain ``nn.Conv1d/2d/3d`` / ``nn.Linear`` modules, computing exactly their function."""

from __future__ import annotations

from typing import Any, TypeVar

import torch.nn as nn

from .conv_geometry import CONV_CLASSES

__all__ = ["convert_plain_layer", "plain_layer_args", "plain_weight_error"]

_Layer = TypeVar("_Layer", bound=nn.Module)
_CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


def plain_layer_args(module: nn.Module, spatial_dims: int = 2, layer: str = "FDConv") -> dict[str, Any]:
    """The arguments of an FDConv over ``spatial_dims`` axes that reproduce ``module``'s geometry: an
    ``nn.Conv{n}d`` of the same rank, or (2-D) an ``nn.Linear``, which gives the token layout."""
    conv_class = CONV_CLASSES[spatial_dims]
    if spatial_dims == 2 and isinstance(module, nn.Linear):
        return dict(in_channels=module.in_features, out_channels=module.out_features, kernel_size=1, token_layout=True)
    if isinstance(module, conv_class):
        return {name: getattr(module, name) for name in _CONV_ARGS}
    accepted = f"nn.{conv_class.__name__}" + (" or nn.Linear" if spatial_dims == 2 else "")
    others = [
        f"{name} for nn.{c.__name__}"
        for n, c, name in ((1, nn.Conv1d, "FDConv1d"), (2, nn.Conv2d, "FDConv"), (3, nn.Conv3d, "FDConv3d"))
        if isinstance(module, c)
    ]
    raise TypeError(
        f"{layer}.from_conv converts {accepted} modules, got {type(module).__name__}"
        + (f" (use {others[0]})" if others else "")
    )


def convert_plain_layer(cls: type[_Layer], module: nn.Module, **fdconv_kwargs: Any) -> _Layer:
    """``cls`` (an FDConv class) built like ``module``, attentions neutral, its weight converted from ``module``'s.

    Parameters keep the source's device, dtype and ``requires_grad``; the training mode is copied too.
    """
    conv_args = plain_layer_args(module, cls.spatial_dims, cls.__name__)
    # Built on "meta" and materialised once: the default weight would be drawn and converted for nothing.
    layer = cls(**conv_args, bias=module.bias is not None, **fdconv_kwargs, device="meta", dtype=module.weight.dtype)
    if layer.use_fdconv and layer.ksm_local_act == "sigmoid" and layer.att_multi != 2.0:
        raise ValueError(
            f"exact conversion needs att_multi=2 with sigmoid attentions (m * sigmoid(0) must be 1), got {layer.att_multi}"
        )
    layer = layer.to_empty(device=module.weight.device)
    layer.reset_attention()
    layer.init_non_persistent_buffers()
    layer.load_conv_weight(module.weight.detach(), None if module.bias is None else module.bias.detach())
    layer.train(module.training)
    for p in layer.parameters():
        p.requires_grad_(module.weight.requires_grad)
    return layer


def plain_weight_error(prefix: str, shape: tuple[int, ...]) -> str:
    """The load error for a plain conv weight met where an FDConv layer stores ``dft_weight``."""
    return (
        f"{prefix}weight is a plain convolution weight of shape {shape}, but {prefix or 'this layer'} is an FDConv that "
        f"stores its weight as {prefix}dft_weight: convert the checkpoint with fdconv_zoo.convert_state_dict(state_dict, "
        "model) (or build the layer with FDConv.from_conv)"
    )
