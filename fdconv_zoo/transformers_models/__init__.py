"""FDConv variants of transformers models; importing this package registers them with the Auto classes."""

from . import convnext, resnet, segformer, swin  # noqa: F401  (registration side effects)
