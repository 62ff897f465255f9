"""FDConv ConvNeXt for transformers: the two MLP projections of every block (``pwconv1``, ``pwconv2``) are FDConv.

They are ``nn.Linear`` layers on channels-last tokens, so they become token-layout (1x1) FDConv layers, as
in the timm variant. ``from_pretrained`` also takes a native ConvNeXt checkpoint
(``facebook/convnext-tiny-224`` layout) and converts it while loading.
"""

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoBackbone, AutoModel, AutoModelForImageClassification, ConvNextConfig
from transformers.models.convnext.modeling_convnext import (
    ConvNextBackbone,
    ConvNextEmbeddings,
    ConvNextEncoder,
    ConvNextForImageClassification,
    ConvNextLayerNorm,
    ConvNextModel,
    ConvNextPreTrainedModel,
)

from ._common import (
    FDConvConfigMixin,
    FDConvPreTrainedModelMixin,
    register_fdconv_auto_classes,
    register_fdconv_checkpoint_conversion,
)

__all__ = [
    "FDConvConvNextBackbone",
    "FDConvConvNextConfig",
    "FDConvConvNextEncoder",
    "FDConvConvNextForImageClassification",
    "FDConvConvNextModel",
    "FDConvConvNextPreTrainedModel",
]


@strict
class FDConvConvNextConfig(FDConvConfigMixin, ConvNextConfig):
    r"""[`ConvNextConfig`] with the FDConv settings (`fdconv_*`, paper defaults: `fdconv_kernel_num=64`).

    A native `model_type="convnext"` config read through this class becomes an FDConv config with the paper
    defaults, so `FDConvConvNextForImageClassification.from_pretrained("facebook/convnext-tiny-224")` works.
    """

    model_type = "fdconv_convnext"
    native_model_type = "convnext"


class FDConvConvNextPreTrainedModel(FDConvPreTrainedModelMixin, ConvNextPreTrainedModel):
    config: FDConvConvNextConfig


class FDConvConvNextEncoder(FDConvConvNextPreTrainedModel, ConvNextEncoder):
    """The native encoder, a ``PreTrainedModel`` of its own, with FDConv MLPs (and so FDConv-aware init)."""

    _fdconv_layers = ("stages.*.layers.*.pwconv1", "stages.*.layers.*.pwconv2")


class FDConvConvNextModel(FDConvConvNextPreTrainedModel, ConvNextModel):
    def __init__(self, config: FDConvConvNextConfig) -> None:
        # ConvNextModel.__init__ with the FDConv encoder (see the module docstring of `_common`); forward is native.
        super(ConvNextModel, self).__init__(config)
        self.config = config
        self.embeddings = ConvNextEmbeddings(config)
        self.encoder = FDConvConvNextEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_sizes[-1], eps=config.layer_norm_eps)
        self.post_init()


class FDConvConvNextForImageClassification(FDConvConvNextPreTrainedModel, ConvNextForImageClassification):
    def __init__(self, config: FDConvConvNextConfig) -> None:
        # ConvNextForImageClassification.__init__ with the FDConv base model; forward is native.
        super(ConvNextForImageClassification, self).__init__(config)
        self.num_labels = config.num_labels
        self.convnext = FDConvConvNextModel(config)
        self.classifier = (
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()


class FDConvConvNextBackbone(FDConvConvNextPreTrainedModel, ConvNextBackbone):
    def __init__(self, config: FDConvConvNextConfig) -> None:
        # ConvNextBackbone.__init__ with the FDConv encoder; forward is native.
        super(ConvNextBackbone, self).__init__(config)
        self.embeddings = ConvNextEmbeddings(config)
        self.encoder = FDConvConvNextEncoder(config)
        self.num_features = [config.hidden_sizes[0]] + config.hidden_sizes
        self.hidden_states_norms = nn.ModuleDict(
            {
                stage: ConvNextLayerNorm(num_channels, data_format="channels_first")
                for stage, num_channels in zip(self.out_features, self.channels)
            }
        )
        self.post_init()


register_fdconv_auto_classes(
    FDConvConvNextConfig,
    ConvNextConfig,
    {
        AutoModel: FDConvConvNextModel,
        AutoModelForImageClassification: FDConvConvNextForImageClassification,
        AutoBackbone: FDConvConvNextBackbone,
    },
)
register_fdconv_checkpoint_conversion(FDConvConvNextConfig.model_type, [r"pwconv1", r"pwconv2"])
