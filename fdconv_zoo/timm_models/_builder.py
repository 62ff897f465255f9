"""Shared machinery for FDConv variants of timm models.

An FDConv variant is timm's own model class with some ``nn.Conv2d``/``nn.Linear`` layers swapped for
exactly converted :class:`~fdconv_zoo.layers.FDConv` layers right after construction. Because the
swap happens inside the ``model_cls`` callable handed to timm's ``build_model_with_cfg``, everything
timm does around the model (pretrained cfgs, weight loading, classifier and input-channel adaptation,
``features_only`` wrapping, ``forward_intermediates``, grad checkpointing) is timm's unchanged code.

A family module only configures: which timm model class, which layer-name globs become FDConv,
the base model's checkpoint filter and feature cfg, and which base architectures it mirrors::

    default_cfgs = generate_default_cfgs(fdconv_pretrained_cfgs(["resnet50"]))

    @register_model
    def resnet50_fdconv(pretrained=False, **kwargs):
        return build_fdconv_model(ResNet, "resnet50_fdconv", pretrained, fdconv_patterns=PATTERNS,
                                  block=Bottleneck, layers=(3, 4, 6, 3), **kwargs)

Pretrained weights are the base model's own timm checkpoints, converted at load time
(:func:`fdconv_filter_fn`); checkpoints saved from FDConv models (:func:`save_fdconv_for_hf`) and the
official mmdet/mmseg and converted checkpoints (``pretrained_cfg_overlay=dict(file=...)``) load through
the same filter, which also refuses any load that would leave a backbone tensor unset.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, get_arch_pretrained_cfgs, save_for_hf

from ..conversion import convert_state_dict
from ..official_checkpoints import backbone_state_dict, check_fills_model
from ..surgery import PAPER_FDCONV_KWARGS, convert_to_fdconv

__all__ = [
    "FDCONV_SUFFIX",
    "IMAGENET_TAG_PATTERN",
    "build_fdconv_model",
    "fdconv_filter_fn",
    "fdconv_model_cls",
    "fdconv_pretrained_cfgs",
    "save_fdconv_for_hf",
]

_logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=nn.Module)
FilterFn = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]

FDCONV_SUFFIX = "_fdconv"
# Tags whose classifier is an ImageNet label space (in1k, in12k, in22k, also as fine-tuning targets).
IMAGENET_TAG_PATTERN = r"(^|_)in(1|12|22)k($|_)"
# Written by timm 1.0.31 into config.json model_args; transformers' TimmWrapper passes num_classes itself
# and fails with "got multiple values for keyword argument 'num_classes'". timm reads num_classes from the
# top-level key; the other model_args (in_chans, global_pool, fdconv_cfg) pass through both libraries.
_WRAPPER_CONFLICTING_ARGS = ("num_classes",)


def fdconv_pretrained_cfgs(
    base_archs: Sequence[str],
    tag_pattern: str = IMAGENET_TAG_PATTERN,
    suffix: str = FDCONV_SUFFIX,
) -> dict[str, dict[str, Any]]:
    """Pretrained cfgs ``{'<base><suffix>.<tag>': cfg}`` mirroring timm's own cfgs of each base architecture.

    For every tag of ``<base>`` (in timm's order, so the default tag stays the default) whose name matches
    ``tag_pattern`` and whose weights are a native timm checkpoint on the ``timm`` Hub org, the cfg is the
    base cfg (preprocessing, classifier, license, ...) with the weight source pinned to the full Hub id
    ``timm/<base>.<tag>`` — the repo the FDConv model converts at load time. Feed the result to timm's
    ``generate_default_cfgs``.
    """
    cfgs: dict[str, dict[str, Any]] = {}
    for base in base_archs:
        source_cfgs = get_arch_pretrained_cfgs(base)
        if not source_cfgs:
            raise ValueError(f"timm has no pretrained cfgs for {base!r}; is it a timm architecture name?")
        for source in source_cfgs.values():
            tag, hub_id = source.tag or "", source.hf_hub_id or ""
            native_timm_weights = hub_id.startswith("timm/") and not source.hf_hub_filename and not source.custom_load
            if not (native_timm_weights and re.search(tag_pattern, tag)):
                continue
            cfg = source.to_dict(remove_source=True)
            for key in ("architecture", "tag"):  # set by register_model for the new name
                cfg.pop(key, None)
            cfg["hf_hub_id"] = hub_id
            cfg["notes"] = (*(cfg.get("notes") or ()), f"FDConv layers converted at load time from {hub_id} (exact).")
            cfgs[f"{base}{suffix}.{tag}"] = cfg
    return cfgs


def fdconv_model_cls(
    model_cls: Callable[..., ModelT],
    patterns: Sequence[str],
    fdconv_kwargs: Mapping[str, Any] | None = None,
) -> Callable[..., ModelT]:
    """A ``model_cls`` for ``build_model_with_cfg``: builds ``model_cls(**kwargs)``, then converts the layers
    whose qualified names match ``patterns`` (globs) to FDConv with ``fdconv_kwargs``.

    The returned model is still an instance of ``model_cls``, so timm's feature wrappers, heads and
    helpers treat it exactly like the base model.
    """
    layer_kwargs = dict(fdconv_kwargs or {})

    def build(**kwargs: Any) -> ModelT:
        model = model_cls(**kwargs)
        convert_to_fdconv(model, patterns, **layer_kwargs)
        return model

    build.__name__ = build.__qualname__ = f"{getattr(model_cls, '__name__', 'model')}WithFDConv"
    return build


def fdconv_filter_fn(
    base_filter_fn: FilterFn | None = None, *, strict: bool = True, with_head: bool = True
) -> FilterFn:
    """A ``pretrained_filter_fn``: official checkpoints reduced to the backbone, the base model's own filter
    (if any), the exact FDConv conversion, then (with ``strict``) the completeness check.

    Detector and segmentor checkpoints (``backbone.`` keys, necks and heads) give their backbone; plain
    checkpoints (the base model's timm weights, the official converted ResNets) get ``weight`` ->
    ``dft_weight`` for every FDConv layer and neutral attention parameters; already converted checkpoints
    pass through. timm loads ``features_only`` and re-headed models non-strictly, so the filter itself
    refuses a checkpoint that leaves any backbone tensor unset or holds keys the model lacks, and one
    without a classifier for a model that keeps the checkpoint's head (``with_head`` and the same
    ``num_classes``; timm itself loads the head strictly). Errors are ``ValueError`` naming the checkpoint
    and the model.
    """

    def filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        cfg = getattr(model, "pretrained_cfg", {})
        names = dict(checkpoint_name=_checkpoint_name(cfg), model_name=cfg.get("architecture", type(model).__name__))
        state_dict = backbone_state_dict(state_dict)
        if base_filter_fn is not None:
            state_dict = base_filter_fn(state_dict, model)
        try:
            converted = convert_state_dict(state_dict, model)
        except ValueError as e:
            raise ValueError(
                f"cannot load {names['checkpoint_name']} into {names['model_name']}: {e}. "
                "Is it a checkpoint of this architecture (same depth and widths)?"
            ) from e
        if strict:
            head = _classifier_prefixes(cfg)
            check_fills_model(
                converted,
                model,
                source=state_dict,
                optional_prefixes=head,
                opt_out="pass pretrained_strict=False to timm.create_model",
                **names,
            )
            keeps_head = with_head and getattr(model, "num_classes", None) == cfg.get("num_classes")
            if keeps_head and head and not any(key.startswith(head) for key in converted):
                raise ValueError(
                    f"{names['checkpoint_name']} has no classifier ({', '.join(p + '*' for p in head)}) for "
                    f"{names['model_name']}: for its backbone, build the model with features_only=True or num_classes=0"
                )
        return converted

    return filter_fn


def _classifier_prefixes(pretrained_cfg: Mapping[str, Any]) -> tuple[str, ...]:
    classifier = pretrained_cfg.get("classifier") or ()
    return tuple(f"{name}." for name in ((classifier,) if isinstance(classifier, str) else classifier))


def _checkpoint_name(pretrained_cfg: Mapping[str, Any]) -> str:
    """The weight source timm loads from, in timm's priority order (hf-hub source, state_dict, file, hub, url)."""
    if pretrained_cfg.get("source") == "hf-hub":
        return pretrained_cfg["hf_hub_id"]
    if pretrained_cfg.get("state_dict") is not None:
        return "the given state_dict"
    return (
        pretrained_cfg.get("file") or pretrained_cfg.get("hf_hub_id") or pretrained_cfg.get("url") or "the checkpoint"
    )


def build_fdconv_model(
    model_cls: Callable[..., ModelT],
    variant: str,
    pretrained: bool,
    *,
    fdconv_patterns: Sequence[str],
    base_filter_fn: FilterFn | None = None,
    feature_cfg: dict[str, Any] | None = None,
    fdconv_cfg: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> ModelT:
    """``build_model_with_cfg`` for an FDConv variant of ``model_cls``.

    ``fdconv_patterns`` select the layers that become FDConv; ``base_filter_fn`` and ``feature_cfg`` are
    those the base family passes to timm. ``fdconv_cfg`` (a user-facing ``create_model`` keyword, recorded
    by timm for re-creation) overrides the paper's layer settings (``PAPER_FDCONV_KWARGS``); conversion
    of pretrained weights stays exact for any setting. Pretrained loads must set every backbone tensor,
    ``features_only`` ones too; ``pretrained_strict=False`` (a ``create_model`` keyword) loads what matches.
    """
    layer_kwargs = {**PAPER_FDCONV_KWARGS, **(fdconv_cfg or {})}
    strict = kwargs.pop("pretrained_strict", True)
    return build_model_with_cfg(
        fdconv_model_cls(model_cls, fdconv_patterns, layer_kwargs),
        variant,
        pretrained,
        pretrained_strict=strict,
        pretrained_filter_fn=fdconv_filter_fn(
            base_filter_fn, strict=strict, with_head=not kwargs.get("features_only", False)
        ),
        feature_cfg=feature_cfg,
        **kwargs,
    )


def save_fdconv_for_hf(
    model: nn.Module,
    save_directory: str | Path,
    model_config: dict[str, Any] | None = None,
    data_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a timm-format Hub folder (``model.safetensors`` + ``config.json``); returns the folder.

    The folder loads with ``timm.create_model('hf-hub:<repo>', pretrained=True)`` (or ``local-dir:``) and
    with transformers' ``AutoModelForImageClassification`` (TimmWrapper) once ``fdconv_zoo`` is imported.
    It is timm's ``save_for_hf`` output except that ``model_args`` loses ``num_classes``, which makes
    TimmWrapper fail (see ``_WRAPPER_CONFLICTING_ARGS``).
    """
    if not hasattr(model, "pretrained_cfg") or not hasattr(model, "num_classes"):
        raise TypeError(
            f"save_fdconv_for_hf saves classification models built by timm.create_model, got {type(model).__name__}; "
            "build the model without features_only to save it"
        )
    save_directory = Path(save_directory)
    save_for_hf(model, save_directory, model_config=model_config, data_config=data_config, safe_serialization=True)
    config_path = save_directory / "config.json"
    config = json.loads(config_path.read_text())
    model_args = {k: v for k, v in config.pop("model_args", {}).items() if k not in _WRAPPER_CONFLICTING_ARGS}
    if model_args:
        config["model_args"] = model_args
    config_path.write_text(json.dumps(config, indent=2))
    _logger.debug("saved %s to %s", config["architecture"], save_directory)
    return save_directory
