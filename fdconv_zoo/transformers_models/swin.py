"""FDConv swin for transformers (in progress)."""
