"""The detector on an FDConv backbone: transformers' RT-DETRv2, D-FINE or DETR, with the backbone's weights
loaded strictly and checked, and the mmdet defaults (frozen stem and first stage, attentions still training).

transformers builds a detector's timm backbone from its config without any pretrained weights, then swaps
its batch norms for frozen ones. So the weights are read here from the timm classifier ``--model`` names
(``arch.tag``, ``local-dir:``, ``hf-hub:``) and copied tensor by tensor into the detector's backbone; every
backbone tensor must be covered, and each copy is compared bitwise with its source.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import FinetuneInputError

__all__ = [
    "DETECTORS",
    "BackboneSource",
    "backbone_of",
    "build_detector",
    "feature_layout",
    "freeze_backbone_defaults",
    "load_backbone_source",
]

_logger = logging.getLogger(__name__)

# --detector name -> (config class name, model type); all three take a timm backbone through TimmBackboneConfig.
DETECTORS = {"rt-detr-v2": "RTDetrV2Config", "d-fine": "DFineConfig", "detr": "DetrConfig"}
_STRIDES = (8, 16, 32)  # the feature maps the RT-DETR family reads; DETR reads the last one


@dataclass
class BackboneSource:
    """A backbone's architecture, weights (``None``: random init) and input statistics: a timm classifier's, or
    (``backbone_config`` set) a transformers FDConv backbone's, such as Swin's."""

    name: str
    architecture: str
    state_dict: dict[str, torch.Tensor] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    backbone_config: Any = None  # transformers backbone config with its out_features; None: timm
    channels: tuple[int, ...] = ()  # of the transformers backbone's out_features


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_TRANSFORMERS_BACKBONES = ("fdconv_resnet", "fdconv_convnext", "fdconv_swin")


def load_backbone_source(model_name: str, feature_maps: int = 3) -> BackboneSource:
    """The backbone ``model_name`` names: a timm ``arch`` (random init), ``arch.tag``, ``local-dir:PATH`` or
    ``hf-hub:ID`` (pretrained, loaded by timm strictly); or a folder of a transformers FDConv backbone or model
    (``fdconv_resnet``, ``fdconv_convnext``, ``fdconv_swin``) giving its last ``feature_maps`` stages, refused
    with the fix when unknown."""
    import timm

    import fdconv_zoo  # noqa: F401  (registers the FDConv architectures)

    config_file = Path(model_name) / "config.json"
    if config_file.is_file() and "architecture" not in json.loads(config_file.read_text()):
        return _transformers_source(model_name, feature_maps)

    pretrained = "." in model_name or model_name.startswith(("local-dir:", "hf-hub:"))
    arch = model_name.split(":", 1)[-1] if ":" in model_name else model_name.partition(".")[0]
    if ":" not in model_name and not timm.is_model(arch):
        raise FinetuneInputError(
            f"unknown timm model {arch!r}; FDConv backbones: {', '.join(timm.list_models('*_fdconv'))} "
            "(arch.tag for pretrained weights, local-dir:PATH for a saved timm model)"
        )
    if pretrained and ":" not in model_name and model_name not in timm.list_pretrained(f"{arch}.*"):
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
        raise FinetuneInputError(
            f"unknown pretrained tag {model_name!r}; tags of {arch}: {tags} (or {arch}: random init)"
        )
    try:
        model = timm.create_model(model_name, pretrained=pretrained)
    except (OSError, RuntimeError, ValueError) as error:
        raise FinetuneInputError(
            f"cannot load backbone {model_name!r}: {error}\n--model takes a timm architecture, arch.tag (offline: in the "
            "Hub cache), local-dir:PATH (a folder with config.json and model.safetensors) or hf-hub:ID"
        ) from None
    cfg = model.pretrained_cfg
    architecture = cfg.get("architecture") or arch
    state = {k: v.detach().clone() for k, v in model.state_dict().items()} if pretrained else None
    return BackboneSource(model_name, architecture, state, tuple(cfg["mean"]), tuple(cfg["std"]))


def _transformers_source(folder: str, feature_maps: int) -> BackboneSource:
    """A transformers FDConv backbone (or model) folder, its last ``feature_maps`` stages as the feature maps
    (Swin's backbone has a norm per output stage, so they are chosen before its weights are read)."""
    from transformers import AutoBackbone, AutoConfig, AutoImageProcessor

    config = AutoConfig.from_pretrained(folder)
    if config.model_type not in _TRANSFORMERS_BACKBONES:
        raise FinetuneInputError(
            f"{folder} holds a {config.model_type!r} model; a transformers backbone must be one of "
            f"{', '.join(_TRANSFORMERS_BACKBONES)} (or pass a timm model)"
        )
    # The backbone class itself: AutoBackbone.from_pretrained (transformers 5.23) asks the Hub about a local path.
    backbone_class = AutoBackbone._model_mapping[type(config)]
    backbone = backbone_class.from_pretrained(folder, out_features=list(config.stage_names[-feature_maps:]))
    mean, std = _IMAGENET  # unless the folder has an image processor with its own statistics
    if (Path(folder) / "preprocessor_config.json").is_file():
        processor = AutoImageProcessor.from_pretrained(folder)
        mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    return BackboneSource(folder, config.model_type, state, mean, std, backbone.config, tuple(backbone.channels))


def feature_layout(architecture: str, strides: tuple[int, ...] = _STRIDES) -> tuple[list[int], list[int]]:
    """(out_indices, channels) of the feature maps at ``strides`` (default 8/16/32) of a timm ``features_only``
    model."""
    import timm

    with torch.device("meta"):
        try:
            features = timm.create_model(architecture, features_only=True)
        except (RuntimeError, AttributeError, TypeError) as error:
            raise FinetuneInputError(
                f"timm model {architecture!r} has no features_only mode ({error}): use a ResNet, ConvNeXt or MiT backbone"
            ) from None
    reductions, channels = features.feature_info.reduction(), features.feature_info.channels()
    if "NHWC" in str(getattr(features, "output_fmt", "NCHW")):
        raise FinetuneInputError(
            f"{architecture!r} gives channels-last features: for Swin pass the folder of a transformers FDConv Swin "
            "(FDConvSwinConfig / FDConvSwinBackbone.save_pretrained), whose feature maps are channels-first"
        )
    indices = [reductions.index(stride) for stride in strides if stride in reductions]
    if len(indices) != len(strides):
        raise FinetuneInputError(f"{architecture!r} has no feature maps at strides {strides} (it has {reductions})")
    return indices, [channels[i] for i in indices]


def build_detector(
    detector: str,
    source: BackboneSource,
    id2label: Mapping[int, str],
    *,
    freeze_batch_norms: bool = True,
    **config_overrides: Any,
) -> nn.Module:
    """``detector`` ("rt-detr-v2", "d-fine", "detr") on ``source``'s architecture, its backbone holding
    ``source``'s weights (checked), for the classes ``id2label``; ``config_overrides`` go into the config.

    ``freeze_batch_norms=False`` keeps trainable batch norms in RT-DETRv2 and D-FINE (DETR always freezes
    them): a backbone trained from scratch needs them, since timm zero-initialises each residual branch's last
    norm, and frozen at zero that branch would never learn."""
    import transformers
    from transformers import AutoModelForObjectDetection, TimmBackboneConfig

    if detector not in DETECTORS:
        raise FinetuneInputError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    labels = dict(id2label=dict(id2label), label2id={v: k for k, v in id2label.items()})
    config_class = getattr(transformers, DETECTORS[detector])
    unknown = sorted(set(config_overrides) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise FinetuneInputError(
            f"{config_class.__name__} has no field {', '.join(unknown)}: check the --detector-arg names"
        )
    if source.backbone_config is not None:
        # transformers' FDConv backbones re-initialise FDConv's attention norm when a saved detector loads, which
        # fails on the frozen norms detectors swap in: keep real batch norms (freeze_backbone_defaults holds them
        # in eval mode); DETR always swaps them.
        if detector == "detr":
            raise FinetuneInputError(
                f"{source.name} is a transformers backbone, which DETR cannot save and reload here: use --detector "
                "rt-detr-v2 or d-fine"
            )
        backbone = copy.deepcopy(source.backbone_config)
        channels = list(source.channels)
        freeze_batch_norms = False
    else:
        indices, channels = feature_layout(source.architecture)
        backbone = TimmBackboneConfig(
            backbone=source.architecture, out_indices=indices[-1:] if detector == "detr" else indices
        )
    if detector == "detr":
        config = config_class(backbone_config=backbone, **labels, **config_overrides)
    else:
        config_overrides.setdefault("freeze_backbone_batch_norms", freeze_batch_norms)
        config = config_class(backbone_config=backbone, encoder_in_channels=channels, **labels, **config_overrides)
    model = AutoModelForObjectDetection.from_config(config)
    if source.state_dict is not None:
        load_backbone_weights(backbone_of(model), source.state_dict)
        _logger.info("loaded %s's weights into the %s backbone (every tensor checked)", source.name, detector)
    return model


def backbone_of(detector: nn.Module) -> nn.Module:
    """The backbone inside a transformers detector: its timm feature extractor (DETR unwraps it, RT-DETR keeps
    it in TimmBackbone), else its transformers backbone."""
    from timm.models import FeatureListNet
    from transformers.backbone_utils import BackboneMixin

    modules = list(detector.modules())
    found = next((m for m in modules if isinstance(m, FeatureListNet)), None)
    found = found or next((m for m in modules if isinstance(m, BackboneMixin)), None)
    if found is None:
        raise TypeError(f"{type(detector).__name__} has no backbone")
    return found


def _source_key(key: str, source: Mapping[str, torch.Tensor]) -> str:
    """The classifier's name of a ``features_only`` tensor: timm flattens ``stages.0`` into ``stages_0``."""
    head, _, rest = key.partition(".")
    candidates = [key]
    if "_" in head:
        candidates.append(".".join([*head.rsplit("_", 1), rest]))
    found = [c for c in candidates if c in source]
    if len(found) != 1:
        raise FinetuneInputError(
            f"the backbone tensor {key!r} has {'no' if not found else 'no unique'} counterpart in the checkpoint: "
            "the weights are not of this architecture (pass the matching --model)"
        )
    return found[0]


def load_backbone_weights(backbone: nn.Module, source: Mapping[str, torch.Tensor]) -> None:
    """Copy ``source`` (a timm classifier's state dict) into ``backbone`` (its ``features_only`` twin, batch norms
    possibly frozen); every backbone tensor must be covered with the same shape, and is compared bitwise after."""
    target = backbone.state_dict()
    mapped = {}
    for key, tensor in target.items():
        origin = source[_source_key(key, source)]
        if origin.shape != tensor.shape:
            raise FinetuneInputError(
                f"backbone tensor {key!r} has shape {tuple(tensor.shape)}, the checkpoint {tuple(origin.shape)}: "
                "the weights are not of this architecture"
            )
        mapped[key] = origin
    backbone.load_state_dict(mapped, strict=True)
    loaded = backbone.state_dict()
    mismatched = [k for k, v in mapped.items() if not torch.equal(loaded[k], v.to(loaded[k].dtype))]
    if mismatched:
        raise RuntimeError(f"backbone weights differ from the checkpoint after loading: {mismatched[:5]}")
    unused = sorted({k.split(".")[0] for k in source} - {_source_key(k, source).split(".")[0] for k in target})
    if unused:
        _logger.info("not in the backbone (the classifier's head and final norm): %s", ", ".join(unused))


def freeze_backbone_defaults(detector: nn.Module, frozen_stages: int = 1, norm_eval: bool = True) -> None:
    """mmdet's detection defaults: the stem and the first ``frozen_stages`` stages frozen, FDConv's attentions
    (KSM, FBM) still trainable, batch norms in eval mode (``norm_eval``); a backbone without known stages
    is left as it is."""
    from ...freezing import freeze_stages

    backbone = backbone_of(detector)
    for parameter in backbone.parameters():  # DETR freezes the stem and layer1 of "resnet" backbones itself
        parameter.requires_grad_(True)
    try:
        freeze_stages(backbone, frozen_stages, train_attention=True, norm_eval=norm_eval)
    except TypeError:
        _logger.info("%s: no known stage layout, so no stages frozen", type(backbone).__name__)
