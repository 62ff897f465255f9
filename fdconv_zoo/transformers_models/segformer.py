"""FDConv segformer for transformers (in progress)."""
