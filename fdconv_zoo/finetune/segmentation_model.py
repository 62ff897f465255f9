"""Segmentation models for fine-tuning: checkpoint checks, the image processor, FDConv models and their Trainer.

A native SegFormer checkpoint loads as the FDConv SegFormer (converted while it loads); a native ConvNeXt,
Swin or ResNet UperNet backbone is replaced by its FDConv twin, which starts out computing the same function.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import FinetuneInputError
from .segmentation_masks import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import Trainer

__all__ = ["checkpoint_converting_trainer", "load_config", "load_model", "load_processor", "num_channels"]

_logger = logging.getLogger(__name__)

# Native UperNet backbones with an FDConv twin (model type fdconv_<type>), converted while loading.
_CONVERTIBLE_BACKBONES = ("convnext", "swin", "resnet")


def load_config(model_name: str) -> Any:
    """The checkpoint's config, refused with the fix when it is missing or not a supported segmentation model."""
    from transformers import AutoConfig

    import fdconv_zoo  # noqa: F401  (registers the FDConv model types)

    fix = (
        "--model takes a checkpoint folder written by save_pretrained, or a Hub id of a SegFormer (e.g. "
        "nvidia/segformer-b0-finetuned-ade-512-512, nvidia/mit-b0) or of an UperNet (e.g. openmmlab/upernet-convnext-tiny); "
        "offline, a Hub id must already be in the local cache"
    )
    path = Path(model_name).expanduser()
    if not path.is_dir() and (path.is_absolute() or model_name.startswith((".", "~")) or model_name.count("/") > 1):
        raise FinetuneInputError(f"there is no model folder {model_name}; {fix}")
    try:
        config = AutoConfig.from_pretrained(model_name)
    except (OSError, ValueError) as error:
        raise FinetuneInputError(f"cannot load model {model_name!r}: {error}\n{fix}") from None
    if config.model_type in ("segformer", "fdconv_segformer"):
        return config
    if config.model_type == "upernet":
        backbone = config.backbone_config.model_type
        if backbone.startswith("fdconv_") or backbone in _CONVERTIBLE_BACKBONES:
            return config
        raise FinetuneInputError(
            f"{model_name!r} is an UperNet with a {backbone!r} backbone, which has no FDConv variant; FDConv backbones: "
            f"{', '.join(f'fdconv_{b}' for b in _CONVERTIBLE_BACKBONES)} (native {', '.join(_CONVERTIBLE_BACKBONES)} backbones are converted)"
        )
    raise FinetuneInputError(
        f"{model_name!r} is a {config.model_type!r} model, not a semantic-segmentation model fine-tune-segmentation "
        "takes: use a SegFormer (segformer, fdconv_segformer) or an UperNet checkpoint (README: 'Semantic segmentation "
        "with UperNet' builds one with an FDConv backbone)"
    )


def num_channels(config: Any) -> int:
    return getattr(config.backbone_config, "num_channels", 3) if config.model_type == "upernet" else config.num_channels


def load_processor(model_name: str, image_size: int | None, reduce_labels: bool | None) -> Any:
    """The checkpoint's SegformerImageProcessor (or one with its mean/std), sized and with ``reduce_labels`` set."""
    from transformers import AutoImageProcessor, SegformerImageProcessor

    try:
        loaded = AutoImageProcessor.from_pretrained(model_name)
    except (OSError, ValueError):  # no preprocessor_config.json: SegFormer's defaults (ImageNet mean/std)
        loaded = None
    if loaded is not None and type(loaded).__name__.startswith("SegformerImageProcessor"):
        processor = loaded
    else:
        stats = {k: getattr(loaded, k) for k in ("image_mean", "image_std") if getattr(loaded, k, None) is not None}
        processor = SegformerImageProcessor(**stats)
    if image_size is not None:
        processor.size = {"height": image_size, "width": image_size}
    if reduce_labels is not None:
        processor.do_reduce_labels = reduce_labels
    return processor


def load_model(model_name: str, config: Any, id2label: dict[int, str]) -> torch.nn.Module:
    """The model with a head for ``id2label`` (replaced when the checkpoint's differs in size), FDConv inside."""
    from transformers import UperNetForSemanticSegmentation

    from ..transformers_models.segformer import FDConvSegformerForSemanticSegmentation

    labels = dict(id2label=id2label, label2id={v: k for k, v in id2label.items()}, ignore_mismatched_sizes=True)
    if config.model_type in ("segformer", "fdconv_segformer"):  # a native config is read as FDConv, converted on load
        return FDConvSegformerForSemanticSegmentation.from_pretrained(
            model_name, semantic_loss_ignore_index=IGNORE_INDEX, **labels
        )
    model = UperNetForSemanticSegmentation.from_pretrained(model_name, loss_ignore_index=IGNORE_INDEX, **labels)
    if config.backbone_config.model_type.startswith("fdconv_"):
        return model
    return _with_fdconv_backbone(model)


def _with_fdconv_backbone(native: torch.nn.Module) -> torch.nn.Module:
    """A native UperNet with its backbone replaced by the FDConv twin, loaded through the twin's own
    load-time conversion (so it computes the native model's function until its attentions train)."""
    from transformers import AutoBackbone, UperNetForSemanticSegmentation
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fdconv_config_class = CONFIG_MAPPING[f"fdconv_{native.config.backbone_config.model_type}"]
    backbone_class = AutoBackbone._model_mapping[fdconv_config_class]
    with tempfile.TemporaryDirectory(prefix="fdconv-backbone-") as folder:
        native.backbone.save_pretrained(folder)
        backbone = backbone_class.from_pretrained(folder)
    config = copy.deepcopy(native.config)
    config.backbone_config = backbone.config
    model = UperNetForSemanticSegmentation(config)
    state = {k: v for k, v in native.state_dict().items() if not k.startswith("backbone.")}
    state.update({f"backbone.{k}": v for k, v in backbone.state_dict().items()})
    model.load_state_dict(state)
    _logger.info("converted the UperNet backbone %s to %s", type(native.backbone).__name__, backbone_class.__name__)
    return model


def checkpoint_converting_trainer() -> type[Trainer]:
    """The Trainer to fine-tune segmentation models with (a function: transformers is imported only when used)."""
    from transformers import Trainer

    class CheckpointConvertingTrainer(Trainer):
        """Trainer whose resume loads the checkpoint through ``from_pretrained``.

        ``save_pretrained`` writes SegFormer checkpoints in the Hub's original key layout (``encoder.block.*``,
        ``mlp.dense1``), but Trainer (transformers 5.23) resumes with a plain non-strict ``load_state_dict``,
        which matches none of those keys and silently restarts from the initial weights. ``from_pretrained``
        applies the registered key conversions; the strict copy then fails loudly on any mismatch.
        """

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
            model = self.model if model is None else model
            if self.is_fsdp_enabled or not hasattr(model, "from_pretrained"):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            loaded = type(model).from_pretrained(resume_from_checkpoint)
            model.load_state_dict(loaded.state_dict())
            return None

    return CheckpointConvertingTrainer
