"""FDConv SegFormer / Mix Transformer (MiT) for Hugging Face transformers.

The models are the native SegFormer classes with FDConv in the two Mix-FFN projections of every block
(``mlp.fc1`` and ``mlp.fc2``, token-layout 1x1 FDConv layers, as the official MiT backbone; the depthwise conv stays
plain), so forward passes, losses and outputs are transformers' own. ``from_pretrained`` also takes native
SegFormer/MiT checkpoints (``nvidia/mit-b*``, ``nvidia/segformer-*``) in the Hub's old (``mlp.dense1``) and
the current (``mlp.fc1``) key layouts: transformers' own SegFormer renamings run first, then every
projection weight becomes its exact FDConv spectrum, so the loaded model computes the native model's
function until its attentions are trained. Images are prepared with the native ``SegformerImageProcessor``.
"""

import dataclasses
import re

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    SegformerConfig,
)
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.segformer.modeling_segformer import (
    SegformerDecodeHead,
    SegformerForImageClassification,
    SegformerForSemanticSegmentation,
    SegformerModel,
    SegformerPreTrainedModel,
)

from ..layers.fdconv import FDConv
from ._common import (
    ConvWeightToSpectrum,
    FDConvConfigMixin,
    FDConvPreTrainedModelMixin,
    FDConvWeightConverter,
    register_fdconv_auto_classes,
)

__all__ = [
    "FDConvSegformerConfig",
    "FDConvSegformerForImageClassification",
    "FDConvSegformerForSemanticSegmentation",
    "FDConvSegformerModel",
    "FDConvSegformerPreTrainedModel",
]

# The Mix-FFN projections, relative to the encoder (current names; the Hub layout is renamed on load).
_MIX_FFN_PROJECTIONS = ("stages.*.blocks.*.mlp.fc1", "stages.*.blocks.*.mlp.fc2")


@strict
class FDConvSegformerConfig(FDConvConfigMixin, SegformerConfig):
    r"""[`SegformerConfig`] with the FDConv settings (`fdconv_*`, paper defaults: `fdconv_kernel_num=64`).

    A native `model_type="segformer"` config read through this class becomes an FDConv config with the
    paper defaults, so `FDConvSegformerForSemanticSegmentation.from_pretrained("nvidia/mit-b0")` works.
    Projections with at most `fdconv_min_channels` channels on a side stay plain linears.
    """

    model_type = "fdconv_segformer"
    native_model_type = "segformer"


def _spectrum_converters(model: nn.Module) -> list[FDConvWeightConverter]:
    """One ``weight`` -> ``dft_weight`` converter per *real* FDConv projection of this model instance.

    Per instance rather than one pattern per model type: a projection that falls back to a plain linear
    (``fdconv_min_channels``) must load the checkpoint's ``weight`` unchanged, and with the Hub layout
    (``mlp.dense1`` renamed to ``mlp.fc1``) transformers cannot fall back to the original key by itself.
    Paths are relative to the encoder, so base-model and task-model checkpoints both match.
    """
    prefix = f"{model.base_model_prefix}."
    converters = []
    for name, module in model.named_modules():
        if isinstance(module, FDConv) and module.use_fdconv:
            path = name.removeprefix(prefix)
            converters.append(
                FDConvWeightConverter(
                    source_patterns=rf"(?<![^.]){re.escape(path)}\.weight",
                    target_patterns=f"{path}.dft_weight",
                    operations=[ConvWeightToSpectrum()],
                )
            )
    return converters


class FDConvSegformerPreTrainedModel(FDConvPreTrainedModelMixin, SegformerPreTrainedModel):
    config: FDConvSegformerConfig

    @staticmethod
    def _load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys=None):
        """The native loader with this instance's spectrum converters after the registered (native) renamings."""
        weight_mapping = [*(load_config.weight_mapping or []), *_spectrum_converters(model)]
        load_config = dataclasses.replace(load_config, weight_mapping=weight_mapping)
        return SegformerPreTrainedModel._load_pretrained_model(
            model, state_dict, checkpoint_files, load_config, expected_keys
        )


class FDConvSegformerModel(FDConvSegformerPreTrainedModel, SegformerModel):
    """The Mix Transformer encoder (`SegformerModel`) with FDConv Mix-FFN projections."""

    _fdconv_layers = _MIX_FFN_PROJECTIONS

    def __init__(self, config: FDConvSegformerConfig) -> None:
        if not isinstance(config, FDConvSegformerConfig):
            raise TypeError(
                f"{type(self).__name__} needs an FDConvSegformerConfig, got {type(config).__name__}: "
                "use FDConvSegformerConfig(**segformer_config.to_dict()) (paper FDConv defaults)"
            )
        super().__init__(config)


class FDConvSegformerForImageClassification(FDConvSegformerPreTrainedModel, SegformerForImageClassification):
    """`SegformerForImageClassification` (forward, loss, outputs) on the FDConv encoder."""

    def __init__(self, config: FDConvSegformerConfig) -> None:
        # SegformerForImageClassification.__init__ with the FDConv encoder; forward is native.
        super(SegformerForImageClassification, self).__init__(config)
        self.num_labels = config.num_labels
        self.segformer = FDConvSegformerModel(config)
        self.classifier = nn.Linear(config.hidden_sizes[-1], config.num_labels)
        self.post_init()


class FDConvSegformerForSemanticSegmentation(FDConvSegformerPreTrainedModel, SegformerForSemanticSegmentation):
    """`SegformerForSemanticSegmentation` (all-MLP decode head; loss on logits upsampled to the label size,
    `semantic_loss_ignore_index` ignored) on the FDConv encoder."""

    def __init__(self, config: FDConvSegformerConfig) -> None:
        # SegformerForSemanticSegmentation.__init__ with the FDConv encoder; forward is native.
        super(SegformerForSemanticSegmentation, self).__init__(config)
        self.segformer = FDConvSegformerModel(config)
        self.decode_head = SegformerDecodeHead(config)
        self.post_init()


register_fdconv_auto_classes(
    FDConvSegformerConfig,
    SegformerConfig,
    {
        AutoModel: FDConvSegformerModel,
        AutoModelForImageClassification: FDConvSegformerForImageClassification,
        AutoModelForSemanticSegmentation: FDConvSegformerForSemanticSegmentation,
    },
)
# transformers' renamings of the Hub layout (encoder.block.* -> stages.*.blocks.*, mlp.dense1 -> mlp.fc1,
# decode_head.linear_c -> linear_projections), registered under our class names as the native ones are.
register_checkpoint_conversion_mapping(
    FDConvSegformerModel.__name__, get_checkpoint_conversion_mapping(SegformerModel.__name__) or []
)
register_checkpoint_conversion_mapping(
    FDConvSegformerForSemanticSegmentation.__name__,
    get_checkpoint_conversion_mapping(SegformerForSemanticSegmentation.__name__) or [],
)
