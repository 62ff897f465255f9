"""FDConv resnet for timm (in progress)."""
