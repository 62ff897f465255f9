"""FDConv Swin for transformers: the two MLP projections of every block are FDConv.

They are ``mlp.fc1``/``mlp.fc2`` here (``intermediate.dense``/``output.dense`` in the checkpoints on the Hub,
which transformers renames when loading), ``nn.Linear`` layers on tokens, so they become token-layout
(1x1) FDConv layers, as in the timm variant. ``from_pretrained`` also takes a native Swin checkpoint
(``microsoft/swin-tiny-patch4-window7-224`` layout) and converts it while loading.
"""

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoBackbone, AutoModel, AutoModelForImageClassification, SwinConfig
from transformers.models.swin.modeling_swin import (
    SwinBackbone,
    SwinEmbeddings,
    SwinEncoder,
    SwinForImageClassification,
    SwinModel,
    SwinPreTrainedModel,
)

from ._common import (
    FDConvConfigMixin,
    FDConvPreTrainedModelMixin,
    register_fdconv_auto_classes,
    register_fdconv_checkpoint_conversion,
)

__all__ = [
    "FDConvSwinBackbone",
    "FDConvSwinConfig",
    "FDConvSwinEncoder",
    "FDConvSwinForImageClassification",
    "FDConvSwinModel",
    "FDConvSwinPreTrainedModel",
]


@strict
class FDConvSwinConfig(FDConvConfigMixin, SwinConfig):
    r"""[`SwinConfig`] with the FDConv settings (`fdconv_*`, paper defaults: `fdconv_kernel_num=64`).

    A native `model_type="swin"` config read through this class becomes an FDConv config with the paper
    defaults, so `FDConvSwinForImageClassification.from_pretrained("microsoft/swin-tiny-patch4-window7-224")`
    works.
    """

    model_type = "fdconv_swin"
    native_model_type = "swin"


class FDConvSwinPreTrainedModel(FDConvPreTrainedModelMixin, SwinPreTrainedModel):
    config: FDConvSwinConfig


class FDConvSwinEncoder(FDConvSwinPreTrainedModel, SwinEncoder):
    """The native encoder, a ``PreTrainedModel`` of its own, with FDConv MLPs (and so FDConv-aware init)."""

    _fdconv_layers = ("layers.*.blocks.*.mlp.fc1", "layers.*.blocks.*.mlp.fc2")


class FDConvSwinModel(FDConvSwinPreTrainedModel, SwinModel):
    def __init__(self, config: FDConvSwinConfig, add_pooling_layer: bool = True, use_mask_token: bool = False) -> None:
        # SwinModel.__init__ with the FDConv encoder (see the module docstring of `_common`); forward is native.
        super(SwinModel, self).__init__(config)
        self.config = config
        self.num_layers = len(config.depths)
        self.num_features = int(config.embed_dim * 2 ** (self.num_layers - 1))
        self.embeddings = SwinEmbeddings(config, use_mask_token=use_mask_token)
        self.encoder = FDConvSwinEncoder(config, self.embeddings.patch_grid)
        self.layernorm = nn.LayerNorm(self.num_features, eps=config.layer_norm_eps)
        self.pooler = nn.AdaptiveAvgPool1d(1) if add_pooling_layer else None
        self.post_init()


class FDConvSwinForImageClassification(FDConvSwinPreTrainedModel, SwinForImageClassification):
    def __init__(self, config: FDConvSwinConfig) -> None:
        # SwinForImageClassification.__init__ with the FDConv base model; forward is native.
        super(SwinForImageClassification, self).__init__(config)
        self.num_labels = config.num_labels
        self.swin = FDConvSwinModel(config)
        self.classifier = (
            nn.Linear(self.swin.num_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()


class FDConvSwinBackbone(FDConvSwinPreTrainedModel, SwinBackbone):
    def __init__(self, config: FDConvSwinConfig) -> None:
        # SwinBackbone.__init__ with the FDConv base model; forward is native.
        super(SwinBackbone, self).__init__(config)
        self.num_features = [config.embed_dim] + [int(config.embed_dim * 2**i) for i in range(len(config.depths))]
        self.swin = FDConvSwinModel(config, add_pooling_layer=False)
        self.hidden_states_norms = nn.ModuleDict(
            {stage: nn.LayerNorm(num_channels) for stage, num_channels in zip(self.out_features, self.channels)}
        )
        self.post_init()


register_fdconv_auto_classes(
    FDConvSwinConfig,
    SwinConfig,
    {
        AutoModel: FDConvSwinModel,
        AutoModelForImageClassification: FDConvSwinForImageClassification,
        AutoBackbone: FDConvSwinBackbone,
    },
)
# After Swin's own renamings of the Hub layout (`intermediate.dense` -> `mlp.fc1`, ...).
register_fdconv_checkpoint_conversion(FDConvSwinConfig.model_type, [r"mlp\.fc1", r"mlp\.fc2"], native="swin")
# The backbone's own key prefixes, as for `SwinBackbone` (looked up by class name before the model type).
register_fdconv_checkpoint_conversion(FDConvSwinBackbone.__name__, [], native="SwinBackbone")
