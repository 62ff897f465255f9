"""FDConv swin for timm (in progress)."""
