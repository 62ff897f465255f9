"""FDConv under the frozen batch norms that detection heads swap into their backbones."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from transformers.models.rt_detr_v2.modeling_rt_detr_v2 import RTDetrV2FrozenBatchNorm2d, replace_batch_norm

import fdconv_zoo  # noqa: F401  (registers the timm models)
from fdconv_zoo.layers import FDConv


def _frozen_reference(bn: nn.BatchNorm2d, z: torch.Tensor) -> torch.Tensor:
    """Running-statistics normalisation of a (B, C) tensor, in float64."""
    z, mean, var = z.double(), bn.running_mean.double(), bn.running_var.double()
    return ((z - mean) / torch.sqrt(var + 1e-5) * bn.weight.double() + bn.bias.double()).float()


@pytest.mark.parametrize("batch", [1, 2])
def test_frozen_norm_in_training_runs_running_statistics(batch: int) -> None:
    torch.manual_seed(0)
    layer = FDConv(32, 32, 3, padding=1, kernel_num=4)
    ksm = layer.KSM_Global
    with torch.no_grad():
        ksm.bn.running_mean.normal_()
        ksm.bn.running_var.uniform_(0.5, 2.0)
        ksm.bn.weight.normal_()
        ksm.bn.bias.normal_()
    bn = ksm.bn
    replace_batch_norm(layer)
    assert isinstance(ksm.bn, RTDetrV2FrozenBatchNorm2d)
    layer.train()
    z = torch.randn(batch, bn.num_features)
    torch.testing.assert_close(ksm._normalize(z), _frozen_reference(bn, z), rtol=1e-5, atol=1e-5)
    out = layer(torch.randn(batch, 32, 16, 16))
    out.square().mean().backward()
    heads = layer.KSM_Global.heads()  # zero-initialised heads: their own weights get the first gradient
    assert heads and all(head.weight.grad.abs().sum() > 0 for head in heads)


def test_frozen_backbone_trains_at_batch_one() -> None:
    torch.manual_seed(0)
    # zero_init_last=False: a zero-initialised last norm would stop every gradient into the residual branches
    model = timm.create_model("resnet18_fdconv", features_only=True, out_indices=(2, 3, 4), zero_init_last=False)
    replace_batch_norm(model)
    model.train()
    features = model(torch.randn(1, 3, 64, 64))
    sum(f.square().mean() for f in features).backward()
    attention = [p for n, p in model.named_parameters() if "KSM_Global" in n and p.grad is not None]
    assert attention and any(p.grad.abs().sum() > 0 for p in attention)


def test_reset_parameters_with_a_frozen_norm() -> None:
    """Reloading a detector re-initialises its backbone's layers, frozen norms included."""
    layer = FDConv(32, 32, 3, padding=1, kernel_num=4)
    replace_batch_norm(layer)
    frozen = layer.KSM_Global.bn
    with torch.no_grad():
        frozen.running_var.fill_(3.0)
        frozen.weight.fill_(2.0)
    layer.KSM_Global.reset_parameters()
    assert torch.equal(frozen.running_var, torch.ones_like(frozen.running_var))
    assert torch.equal(frozen.weight, torch.ones_like(frozen.weight))
