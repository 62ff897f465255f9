"""FDConv mit for timm (in progress)."""
