"""FDConv variants of timm models; importing this package registers them with timm (one file per family).

The FDConv layers (2-D, 1-D and 3-D) are also registered as timm no-trace (leaf) modules: their forward
depends on the input's values (the attentions choose the weights), so timm's FX feature extraction
(``features_only=True, feature_cls='fx'``, ``timm.models.create_feature_extractor``) keeps each layer as one
graph node instead of tracing into it.
"""

from timm.layers import register_notrace_module

from ..layers import FDConv, FDConv1d, FDConv3d
from . import convnext, mit, resnet, swin  # noqa: F401  (registration side effects)
from ._builder import save_fdconv_for_hf

for _layer_class in (FDConv, FDConv1d, FDConv3d):
    register_notrace_module(_layer_class)

__all__ = ["save_fdconv_for_hf"]
