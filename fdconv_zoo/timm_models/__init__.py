"""FDConv variants of timm models; importing this package registers them with timm."""
