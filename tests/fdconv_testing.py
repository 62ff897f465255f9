"""Test utilities shared by the layer and model tests."""

from __future__ import annotations

import torch
import torch.nn as nn

from fdconv_zoo import FDConv

ATTENTION_PARTS = ("KSM_Global", "KSM_Local", "FBM")


@torch.no_grad()
def perturb_attention(model: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Move every FDConv attention parameter away from its neutral init (logits of order 1).

    At the exact neutral init the attention heads are zero, so the descriptor projection gets no gradient
    and every attention is 1; perturbed, every path of the layer matters.
    """
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, FDConv) and module.use_fdconv:
            for name, p in module.named_parameters():
                if name.split(".")[0] in ATTENTION_PARTS:
                    noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p)
                    p.add_(noise * scale * max(1.0, p.detach().abs().mean().item()))
    return model


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
