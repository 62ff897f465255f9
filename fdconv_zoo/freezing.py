"""Frozen backbone stages whose FDConv attentions keep training, as the official detection recipe does.

mmdet's ``frozen_stages=n`` freezes the stem and the first ``n`` stages (parameters without gradients,
modules in eval mode, re-applied by every ``train()``); the official FDConv backbone then gives gradients
back to the parameters of those stages whose names contain ``KSM`` or ``FBM`` (``need_grad_list``), so the
attentions of a frozen stage adapt while its spectra stay fixed. ``norm_eval=True`` additionally keeps
every BatchNorm of the model in eval mode (running statistics fixed), FDConv's own ``KSM_Global.bn``
included, as in the paper's detection configs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["ATTENTION_PARAMETER_NAMES", "backbone_stages", "freeze_stages"]

# The official need_grad_list of the paper's configs: substrings of the attention parameters' names.
ATTENTION_PARAMETER_NAMES = ("KSM", "FBM")

# (stem modules, stage name template, first stage index) of the supported layouts, tried in order; names
# are relative to the model, or to its transformers base model. "_" templates are timm's flattened
# features_only wrappers.
_LAYOUTS: tuple[tuple[tuple[str, ...], str, int], ...] = (
    (("conv1", "bn1"), "layer{}", 1),  # timm ResNet (also features_only)
    (("stem",), "stages.{}", 0),  # timm ConvNeXt
    (("stem_0", "stem_1"), "stages_{}", 0),  # timm ConvNeXt, features_only
    (("patch_embed",), "layers.{}", 0),  # timm Swin
    (("patch_embed",), "layers_{}", 0),  # timm Swin, features_only
    (("embedder",), "encoder.stages.{}", 0),  # transformers ResNet
    (("embeddings",), "encoder.stages.{}", 0),  # transformers ConvNeXt
    (("embeddings",), "encoder.layers.{}", 0),  # transformers Swin
)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def backbone_stages(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """The stem modules and the stages of a timm or transformers backbone.

    Raises ``TypeError`` for a model without a known stem/stage layout (ResNet, ConvNeXt, Swin).
    """
    root = getattr(model, "base_model", model)  # transformers task models nest the backbone
    for stem_names, stage_name, first in _LAYOUTS:
        stem = [_submodule(root, name) for name in stem_names]
        stages = []
        while (stage := _submodule(root, stage_name.format(first + len(stages)))) is not None:
            stages.append(stage)
        if stages and all(module is not None for module in stem):
            return stem, stages
    raise TypeError(
        f"freeze_stages does not know the stages of {type(model).__name__}; it supports the timm and transformers "
        "ResNet, ConvNeXt and Swin models of fdconv_zoo (and their features_only wrappers)"
    )


def freeze_stages(
    model: nn.Module, num_stages: int, *, train_attention: bool = True, norm_eval: bool = False
) -> nn.Module:
    """Freeze the stem and the first ``num_stages`` stages of ``model``, mmdet's ``frozen_stages``; returns ``model``.

    ``num_stages=0`` freezes only the stem, ``-1`` nothing (mmdet's values; the paper uses 1). Frozen
    modules lose their gradients and stay in eval mode through ``model.train()``. With ``train_attention``
    (the paper's setting) the FDConv attention parameters (``KSM_Global``, ``KSM_Local``, ``FBM``) of the
    frozen stages keep their gradients. ``norm_eval`` keeps every BatchNorm of the model in eval mode,
    frozen or not (fixed running statistics; their affine parameters still train outside frozen stages).
    Calling it again replaces the previous setting.
    """
    stem, stages = backbone_stages(model)
    if not -1 <= num_stages <= len(stages):
        raise ValueError(f"num_stages must be in [-1, {len(stages)}] for {type(model).__name__}, got {num_stages}")
    frozen = [*stem, *stages[:num_stages]] if num_stages >= 0 else []
    for module in (*stem, *stages):
        module.requires_grad_(True)
    for module in frozen:
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(train_attention and any(part in name for part in ATTENTION_PARAMETER_NAMES))
    eval_modules = [*frozen]
    if norm_eval:
        eval_modules += [m for m in model.modules() if isinstance(m, _BatchNorm)]
    # An instance attribute shadows nn.Module.train, so every train() (also the parent's recursive one)
    # re-applies the eval modes; functools.partial keeps the model picklable and deep-copyable.
    model.__dict__.pop("train", None)
    model.train = functools.partial(_train_keeping_eval, model, eval_modules)
    return model.train(model.training)


def _train_keeping_eval(model: nn.Module, eval_modules: Sequence[nn.Module], mode: bool = True) -> nn.Module:
    type(model).train(model, mode)
    for module in eval_modules:
        module.eval()
    return model
