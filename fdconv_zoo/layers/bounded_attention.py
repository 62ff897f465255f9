"""The bounded attention activations of FDConv, shared by every branch (KSM global and local, FBM)."""

from __future__ import annotations

import torch

__all__ = ["bounded_attention"]


def bounded_attention(
    logits: torch.Tensor, act: str, neutral: float = 1.0, dim: int = 1, in_place: bool = False
) -> torch.Tensor:
    """The official bounded attentions, each equal to ``neutral`` at zero logits.

    ``sigmoid``: ``2 * neutral * sigmoid(z)``; ``tanh``: ``neutral * (1 + tanh(z))``; ``softmax`` over ``dim``,
    times ``neutral`` and the size of ``dim`` (so its mean is ``neutral``). Zero-initialised heads therefore
    make every attention neutral, which is what lets a converted layer equal its source convolution.
    """
    if act == "sigmoid":
        out, factor = (logits.sigmoid_() if in_place else torch.sigmoid(logits)), 2.0 * neutral
    elif act == "tanh":
        out, factor = (logits.tanh_().add_(1.0) if in_place else 1.0 + torch.tanh(logits)), neutral
    elif act == "softmax":
        out, factor = torch.softmax(logits, dim=dim), neutral * logits.shape[dim]
    else:
        raise ValueError(f"unknown attention activation {act!r}; use 'sigmoid', 'tanh' or 'softmax'")
    if factor == 1.0:
        return out
    return out.mul_(factor) if in_place else out * factor
