"""Pieces shared by the FDConv variants of transformers models (ResNet, ConvNeXt, Swin, SegFormer).

A family module subclasses the native classes and adds three things from here:

* :class:`FDConvConfigMixin`: the FDConv settings as config fields (paper defaults), validated when the
  config is built, and the adoption of a native ``config.json`` (``model_type="resnet"`` becomes
  ``"fdconv_resnet"`` with paper defaults), so ``from_pretrained`` takes an original checkpoint.
* :class:`FDConvPreTrainedModelMixin`: turns the layers named by ``_fdconv_layers`` into FDConv in
  ``post_init`` (before transformers initialises the weights) and initialises FDConv layers in
  ``_init_weights`` with transformers' guarded initialisers, so meta-device loading leaves every loaded
  tensor alone, makes missing attention parameters exactly neutral and recomputes the non-persistent
  ``frequency_group`` buffers.
* :func:`register_fdconv_checkpoint_conversion`: a load-time weight conversion (transformers'
  ``conversion_mapping`` machinery) turning the ``weight`` of every FDConv layer of a native checkpoint
  into its exact ``dft_weight`` spectrum. Saving keeps the FDConv layout (the native one cannot hold the
  attention parameters).

Every class that *owns* FDConv layers must be an FDConv-aware ``PreTrainedModel``: transformers initialises
a nested ``PreTrainedModel`` (e.g. the native ``ConvNextEncoder``) with that sub-model's own ``_init_weights``.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoImageProcessor
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.core_model_loading import ConversionOps, WeightConverter, WeightRenaming
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

from ..conversion import conv_weight_to_spectrum
from ..layers.fdconv import FDConv
from ..surgery import PAPER_FDCONV_KWARGS, convert_to_fdconv

__all__ = [
    "ConvWeightToSpectrum",
    "FDConvConfigMixin",
    "FDConvPreTrainedModelMixin",
    "FDConvWeightConverter",
    "init_fdconv_weights",
    "register_fdconv_auto_classes",
    "register_fdconv_checkpoint_conversion",
]

logger = logging.getLogger(__name__)

# Channels of the layer built to validate FDConv settings: above the default plain-conv threshold (16).
_PROBE_CHANNELS = 32


@dataclass(kw_only=True)
class FDConvConfigMixin:
    """FDConv settings of a model config; mix in *before* the native config class.

    The defaults are the paper's (the layer defaults with ``kernel_num=64``); each field maps to the FDConv
    argument of the same name without the ``fdconv_`` prefix, except ``fdconv_min_channels``
    (``use_fdconv_if_c_gt``: layers with ``min(in, out) <=`` it stay plain convolutions, as the official layer).
    ``fdconv_kernel_num=None`` is the official ``out_channels // 2``.
    Subclasses set ``native_model_type``: a config of that type is read as this FDConv config.
    """

    native_model_type: ClassVar[str] = ""

    fdconv_kernel_num: int | None = PAPER_FDCONV_KWARGS["kernel_num"]
    fdconv_param_ratio: int = 1
    fdconv_reduction: float | int = 0.0625
    fdconv_kernel_temp: float | int = 1.0
    fdconv_temp: float | int | None = None
    fdconv_att_multi: float | int = 2.0
    fdconv_use_ksm_local: bool = True
    fdconv_ksm_only_kernel_att: bool = False
    fdconv_ksm_global_act: str = "sigmoid"
    fdconv_ksm_local_act: str = "sigmoid"
    fdconv_min_channels: int = 16
    fdconv_fbm_cfg: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        model_type = kwargs.pop("model_type", self.model_type)
        if model_type not in (self.model_type, self.native_model_type):
            raise ValueError(self._foreign_model_type_message(model_type))
        super().__post_init__(**kwargs)

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: Any, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read a native checkpoint's config as this FDConv config (paper defaults); refuse other architectures."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type == cls.native_model_type:
            logger.info(
                "reading the `%s` config of %s as `%s` (FDConv paper defaults)",
                model_type,
                pretrained_model_name_or_path,
                cls.model_type,
            )
            config_dict = {**config_dict, "model_type": cls.model_type}
        elif model_type not in (None, cls.model_type):
            raise ValueError(f"{pretrained_model_name_or_path}: {cls._foreign_model_type_message(model_type)}")
        return config_dict, kwargs

    @classmethod
    def _foreign_model_type_message(cls, model_type: str) -> str:
        return (
            f"this is a `{model_type}` checkpoint, but {cls.__name__} reads `{cls.native_model_type}` checkpoints "
            f"(converted to FDConv when the weights load) and `{cls.model_type}` ones"
        )

    @property
    def fdconv_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`FDConv` (and of ``convert_to_fdconv``) for the converted layers."""
        return dict(
            kernel_num=self.fdconv_kernel_num,
            param_ratio=self.fdconv_param_ratio,
            reduction=self.fdconv_reduction,
            kernel_temp=self.fdconv_kernel_temp,
            temp=self.fdconv_temp,
            att_multi=self.fdconv_att_multi,
            use_ksm_local=self.fdconv_use_ksm_local,
            ksm_only_kernel_att=self.fdconv_ksm_only_kernel_att,
            ksm_global_act=self.fdconv_ksm_global_act,
            ksm_local_act=self.fdconv_ksm_local_act,
            use_fdconv_if_c_gt=self.fdconv_min_channels,
            fbm_cfg=self.fdconv_fbm_cfg,
        )

    def validate_fdconv(self) -> None:
        """Reject invalid FDConv settings when the config is built, not when a model is.

        The layer is the single source of truth: a small 3x3 FDConv (with frequency band modulation) is
        converted from a plain conv on the meta device with these settings.
        """
        if self.fdconv_min_channels < 0:
            raise ValueError(f"fdconv_min_channels must be >= 0, got {self.fdconv_min_channels}")
        probe = nn.Conv2d(_PROBE_CHANNELS, _PROBE_CHANNELS, 3, padding=1, device="meta")
        try:
            FDConv.from_conv(probe, **{**self.fdconv_kwargs, "use_fdconv_if_c_gt": _PROBE_CHANNELS // 2})
        except (TypeError, ValueError) as error:
            raise ValueError(f"invalid FDConv settings in {type(self).__name__}: {error}") from None


@torch.no_grad()
def init_fdconv_weights(layer: FDConv) -> None:
    """Initialise ``layer`` under transformers' guarded initialisers: official weight init, neutral attentions.

    The layer's own initialisers go through ``torch.nn.init``, which transformers guards while it
    initialises a model, so tensors loaded from a checkpoint are left alone and missing attention
    parameters of a loaded layer come out exactly neutral. Only ``dft_weight`` needs the explicit
    ``init.copy_``. The non-persistent ``frequency_group`` buffer is always recomputed (meta-device
    loading leaves it empty).
    """
    if not layer.use_fdconv:
        layer.reset_parameters()
        return
    layer.init_non_persistent_buffers()
    if not getattr(layer.dft_weight, "_is_hf_initialized", False):  # skip the FFT for loaded spectra
        init.copy_(layer.dft_weight, layer.default_spectrum())
    layer.reset_bias()
    layer.reset_attention()


class FDConvPreTrainedModelMixin:
    """Mix into a family's ``PreTrainedModel`` subclass, before the native class.

    ``_fdconv_layers`` (glob patterns over module names, relative to the class) names the native
    ``nn.Conv2d``/``nn.Linear`` layers a class builds itself and that become FDConv; classes that only
    nest an FDConv sub-model leave it empty.
    """

    _fdconv_layers: ClassVar[tuple[str, ...]] = ()

    def post_init(self) -> None:
        if not isinstance(self.config, FDConvConfigMixin):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got a {type(self.config).__name__}; "
                f"a native config converts with {self.config_class.__name__}.from_dict(config.to_dict())"
            )
        # Converted here, after the native __init__ built the layers and before transformers initialises
        # the weights, so FDConv layers are initialised by _init_weights like every other module.
        if self._fdconv_layers:
            convert_to_fdconv(self, self._fdconv_layers, **self.config.fdconv_kwargs)
        super().post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Modules are visited children first: an FDConv's attention heads got the family's generic conv
        # init just before; init_fdconv_weights makes the missing ones neutral again.
        super()._init_weights(module)
        if isinstance(module, FDConv):
            init_fdconv_weights(module)


class ConvWeightToSpectrum(ConversionOps):
    """Load-time op: the plain ``weight`` of a native conv/linear becomes the FDConv layer's exact ``dft_weight``."""

    @torch.no_grad()
    def convert(
        self,
        input_dict: dict[str, Any],
        source_patterns: list[str],
        target_patterns: list[str],
        *,
        model: nn.Module,
        full_layer_name: str,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        (tensors,) = input_dict.values()
        weight = tensors[0] if isinstance(tensors, list) else tensors
        layer = model.get_submodule(full_layer_name.rpartition(".")[0])
        # Keyed by the full parameter name, so targets may use back-references (``\1.dft_weight``).
        return {full_layer_name: conv_weight_to_spectrum(weight, layer.param_ratio)}


class FDConvWeightConverter(WeightConverter):
    """``<layer>.weight`` -> ``<layer>.dft_weight`` for native checkpoints; saving keeps the FDConv layout."""

    __slots__ = ()

    def reverse_transform(self) -> WeightRenaming:
        # The native layout cannot hold the attention parameters, and a trained spectrum is not the
        # transform of a plain weight any more: saved checkpoints keep ``dft_weight`` (an identity renaming).
        keep = WeightRenaming(source_patterns=r"\.dft_weight", target_patterns=".dft_weight")
        keep.scope_prefix, keep.base_model_prefix = self.scope_prefix, self.base_model_prefix
        return keep


def register_fdconv_checkpoint_conversion(
    model_type_or_class_name: str, layer_patterns: Sequence[str], native: str | None = None
) -> None:
    """Register the load-time conversion of native checkpoints for an FDConv model type (or class name).

    ``layer_patterns`` are regexes of the FDConv layers' names as they appear in the checkpoint keys *after*
    the native renamings of ``native`` (a native model type or class name whose registered conversion
    mapping, e.g. Swin's old-layout renamings, comes first). A matched ``weight`` key whose layer is a real
    FDConv becomes its ``dft_weight``; for a layer that fell back to a plain conv (too few channels) the
    key is loaded unchanged by transformers. Checkpoints already in the FDConv layout pass through.
    """
    native_transforms = get_checkpoint_conversion_mapping(native) if native else None
    converters = [
        FDConvWeightConverter(
            source_patterns=rf"(?<!\w)({pattern})\.weight",
            target_patterns=r"\1.dft_weight",
            operations=[ConvWeightToSpectrum()],
        )
        for pattern in layer_patterns
    ]
    register_checkpoint_conversion_mapping(model_type_or_class_name, [*(native_transforms or []), *converters])


def register_fdconv_auto_classes(
    config_class: type[FDConvConfigMixin], native_config_class: type, models: Mapping[type, type]
) -> None:
    """Register an FDConv config and its models with the Auto classes (``{AutoModel: FDConvXModel, ...}``).

    The config also gets the native model's image processors, so a checkpoint whose
    ``preprocessor_config.json`` names none still resolves through ``AutoImageProcessor``.
    """
    AutoConfig.register(config_class.model_type, config_class)
    for auto_class, model_class in models.items():
        auto_class.register(config_class, model_class)
    AutoImageProcessor.register(
        config_class, image_processor_classes=dict(IMAGE_PROCESSOR_MAPPING[native_config_class])
    )
