"""FDConv convnext for transformers (in progress)."""
