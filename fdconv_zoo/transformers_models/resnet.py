"""FDConv resnet for transformers (in progress)."""
