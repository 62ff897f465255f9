"""Test utilities shared by the layer and model tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

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


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every norm affine, bias, layer scale and BN statistic away from its init, so that no branch is
    switched off (timm's ResNet zero-inits bn3, ConvNeXt's layer scale starts at 1e-6) and each layer matters
    in an equivalence check."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.dim() <= 1:
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0.0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def torchrun_on_two_cpu_processes(worker: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """``worker`` with ``args`` under ``torchrun`` on 2 CPU processes (gloo, one thread each), on a free port: a
    fixed one collides with any other run on the machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, str(worker), *args], env=env, capture_output=True, text=True, timeout=timeout)
