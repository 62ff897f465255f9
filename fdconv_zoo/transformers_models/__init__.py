"""FDConv variants of transformers models; importing this package registers them with the Auto classes."""
