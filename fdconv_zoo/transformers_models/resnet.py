"""FDConv ResNet for transformers, with FDConv where the official backbone has it.

Every convolution of the residual blocks (Bottleneck 1x1/3x3/1x1, BasicBlock 3x3/3x3) is an FDConv; the
stem and the shortcut (downsample) convolutions stay plain. ``from_pretrained`` also takes a native ResNet
checkpoint (``microsoft/resnet-50`` layout): its block weights become FDConv spectra while loading, and the
loaded model computes the native model's function until its attentions are trained.
"""

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoBackbone, AutoModel, AutoModelForImageClassification, ResNetConfig
from transformers.models.resnet.modeling_resnet import (
    ResNetBackbone,
    ResNetForImageClassification,
    ResNetModel,
    ResNetPreTrainedModel,
)

from ._common import (
    FDConvConfigMixin,
    FDConvPreTrainedModelMixin,
    register_fdconv_auto_classes,
    register_fdconv_checkpoint_conversion,
)

__all__ = [
    "FDConvResNetBackbone",
    "FDConvResNetConfig",
    "FDConvResNetForImageClassification",
    "FDConvResNetModel",
    "FDConvResNetPreTrainedModel",
]

# Module names of the block convolutions: `layer.0/1/2.convolution` of every residual layer.
_BLOCK_CONVOLUTIONS = ("encoder.stages.*.layers.*.layer.*.convolution",)


@strict
class FDConvResNetConfig(FDConvConfigMixin, ResNetConfig):
    r"""[`ResNetConfig`] with the FDConv settings (`fdconv_*`, paper defaults: `fdconv_kernel_num=64`).

    A native `model_type="resnet"` config read through this class becomes an FDConv config with the paper
    defaults, so `FDConvResNetForImageClassification.from_pretrained("microsoft/resnet-50")` works.

    Example:
    ```python
    >>> from fdconv_zoo.transformers_models.resnet import FDConvResNetConfig, FDConvResNetModel
    >>> model = FDConvResNetModel(FDConvResNetConfig(fdconv_kernel_num=64))
    ```
    """

    model_type = "fdconv_resnet"
    native_model_type = "resnet"


class FDConvResNetPreTrainedModel(FDConvPreTrainedModelMixin, ResNetPreTrainedModel):
    config: FDConvResNetConfig


class FDConvResNetModel(FDConvResNetPreTrainedModel, ResNetModel):
    _fdconv_layers = _BLOCK_CONVOLUTIONS


class FDConvResNetForImageClassification(FDConvResNetPreTrainedModel, ResNetForImageClassification):
    def __init__(self, config: FDConvResNetConfig) -> None:
        # ResNetForImageClassification.__init__ with the FDConv base model (see the module docstring of `_common`);
        # forward is native.
        super(ResNetForImageClassification, self).__init__(config)
        self.num_labels = config.num_labels
        self.resnet = FDConvResNetModel(config)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity(),
        )
        self.post_init()


class FDConvResNetBackbone(FDConvResNetPreTrainedModel, ResNetBackbone):
    _fdconv_layers = _BLOCK_CONVOLUTIONS


register_fdconv_auto_classes(
    FDConvResNetConfig,
    ResNetConfig,
    {
        AutoModel: FDConvResNetModel,
        AutoModelForImageClassification: FDConvResNetForImageClassification,
        AutoBackbone: FDConvResNetBackbone,
    },
)
register_fdconv_checkpoint_conversion(FDConvResNetConfig.model_type, [r"layer\.\d+\.convolution"])
