"""FDConv variants of timm models; importing this package registers them with timm (one file per family)."""

from . import convnext, mit, resnet, swin  # noqa: F401  (registration side effects)
from ._builder import save_fdconv_for_hf

__all__ = ["save_fdconv_for_hf"]
