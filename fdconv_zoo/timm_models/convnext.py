"""FDConv convnext for timm (in progress)."""
