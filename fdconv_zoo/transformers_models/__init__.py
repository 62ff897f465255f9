"""FDConv variants of transformers models; importing this package registers them with the Auto classes."""

from . import convnext, resnet, segformer, swin  # noqa: F401  (registration side effects)
from .official_resnet import load_official_checkpoint

__all__ = ["load_official_checkpoint"]
