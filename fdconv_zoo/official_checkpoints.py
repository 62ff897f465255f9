"""Reading the official FDConv checkpoints and refusing loads that leave a backbone partly unset.

The official code trains FDConv backbones inside mmdet/mmseg, whose checkpoints are
``{'meta': ..., 'state_dict': {'backbone.<key>': ..., 'neck.<key>': ..., 'rpn_head.<key>': ...}}`` with
backbone keys in the timm/torchvision ResNet layout; its conversion script writes the bare (plain-key)
state dict of an ImageNet ResNet with ``dft_weight`` spectra and no attention parameters
(``resnet50_Convert2FDConv.pth``). :func:`backbone_state_dict` reduces all of them to backbone keys;
:func:`check_fills_model` is the completeness check every pretrained load runs (timm loads
``features_only`` and re-headed models non-strictly, so a mismatched checkpoint would otherwise
load nothing without an error).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn as nn

from .layers import FDConv

__all__ = [
    "ATTENTION_MODULES",
    "BACKBONE_PREFIX",
    "backbone_state_dict",
    "check_fills_model",
    "read_checkpoint",
    "unwrap_checkpoint",
]

_logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone."
# Sub-modules of an FDConv layer holding its attentions (the official need_grad_list names them so).
ATTENTION_MODULES = ("KSM_Global", "KSM_Local", "FBM")
# Training-loop wrappers around a state dict: mmengine/mmcv ('state_dict'), torchvision/DeiT-style ('model').
_NESTING_KEYS = ("state_dict", "model")
_SHOWN_KEYS = 5


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint file's contents: safetensors, or a pickle read with ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict inside a training checkpoint (``state_dict``/``model`` nesting; ``meta``, optimiser and
    other entries are dropped); a bare state dict is returned as is."""
    for key in _NESTING_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            return dict(inner)
    return dict(checkpoint)


def backbone_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone's state dict from an official checkpoint of any kind.

    Nested checkpoints are unwrapped; in a detector or segmentor checkpoint (``backbone.`` keys) the
    prefix is stripped and every other group (``neck``, ``rpn_head``, ``roi_head``, ``decode_head``, ...)
    is dropped with one log line saying how many keys of which groups. Plain checkpoints pass through.
    """
    state_dict = unwrap_checkpoint(checkpoint)
    if not any(key.startswith(BACKBONE_PREFIX) for key in state_dict):
        return state_dict
    backbone: dict[str, Any] = {}
    dropped: Counter[str] = Counter()
    for key, value in state_dict.items():
        if key.startswith(BACKBONE_PREFIX):
            backbone[key.removeprefix(BACKBONE_PREFIX)] = value
        else:
            dropped[key.split(".", 1)[0]] += 1
    if dropped:
        groups = ", ".join(f"{group} ({count})" for group, count in dropped.items())
        _logger.info(
            "kept the %d backbone keys of the checkpoint, dropped %d others: %s",
            len(backbone),
            sum(dropped.values()),
            groups,
        )
    return backbone


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN_KEYS]) + (", ..." if len(keys) > _SHOWN_KEYS else "")


def _attention_layer(key: str, layers: Collection[str]) -> str | None:
    """The FDConv layer (qualified name) whose attention parameter ``key`` is, if it is one."""
    for part in ATTENTION_MODULES:
        layer, sep, _ = key.partition(f".{part}.")
        if sep and layer in layers:
            return layer
    return None


def check_fills_model(
    state_dict: Mapping[str, Any],
    model: nn.Module,
    *,
    source: Mapping[str, Any] | None = None,
    optional_prefixes: tuple[str, ...] = (),
    checkpoint_name: str = "the checkpoint",
    model_name: str | None = None,
    opt_out: str = "load non-strictly",
) -> None:
    """Raise ``ValueError`` unless ``state_dict`` sets every parameter and persistent buffer of ``model``.

    ``optional_prefixes`` (a classifier being replaced) may be missing and may hold unknown keys.
    ``source`` is the checkpoint before the FDConv conversion: attention parameters that the conversion
    took from the (neutral) model count as missing for a layer whose checkpoint holds some of its
    attention parameters but not all of them, since such a layer is damaged, not plain. The message gives
    the counts, the first missing and unexpected keys, and ``opt_out``. ``num_batches_tracked`` counters
    are not required.
    """
    expected = [k for k in model.state_dict() if not k.startswith(optional_prefixes)]
    required = [k for k in expected if not k.endswith("num_batches_tracked")]
    missing = [k for k in required if k not in state_dict]
    if source is not None:
        layers = {name for name, module in model.named_modules() if isinstance(module, FDConv) and module.use_fdconv}
        own = {_attention_layer(k, layers) for k in source} - {None}
        missing += [k for k in required if k in state_dict and k not in source and _attention_layer(k, layers) in own]
    known = set(expected)
    unexpected = [k for k in state_dict if k not in known and not k.startswith(optional_prefixes)]
    if not missing and not unexpected:
        return
    problems = []
    if missing:
        problems.append(f"it leaves {len(missing)} of the model's {len(required)} tensors unset ({_shown(missing)})")
    if unexpected:
        problems.append(f"it has {len(unexpected)} keys the model does not have ({_shown(unexpected)})")
    raise ValueError(
        f"cannot load {checkpoint_name} into {model_name or type(model).__name__}: {' and '.join(problems)}. "
        f"Is it a checkpoint of this architecture (same depth, widths and FDConv layers)? To load it anyway, {opt_out}."
    )
