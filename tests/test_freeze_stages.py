"""``freeze_stages``: mmdet's ``frozen_stages`` with the official backbone's trainable attentions (``KSM``/``FBM``)
and ``norm_eval``, for timm and transformers models.

The reference is the specification of the official behaviour: after ``model.train()`` and one training step,
only the attention parameters of frozen stages have gradients there, frozen BatchNorms are in eval mode and
their running statistics are unchanged, and the rest of the network trains as usual.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import timm
import torch
import torch.nn as nn
from fdconv_testing import perturb_attention, randomize_norms
from torch.nn.modules.batchnorm import _BatchNorm

from fdconv_zoo import freeze_stages
from fdconv_zoo.freezing import backbone_stages
from fdconv_zoo.transformers_models.resnet import FDConvResNetBackbone, FDConvResNetConfig
from fdconv_zoo.transformers_models.swin import FDConvSwinConfig, FDConvSwinModel

ATTENTION = ("KSM", "FBM")


def resnet_models() -> dict[str, nn.Module]:
    """Tiny ResNets with non-neutral attentions and norms (at the neutral init the descriptor projections get no
    gradient; timm zero-initialises the last BatchNorm of every block)."""
    models = {
        "timm": timm.create_model("resnet18_fdconv"),
        "timm_features": timm.create_model("resnet18_fdconv", features_only=True),
        "transformers": FDConvResNetBackbone(
            FDConvResNetConfig(
                layer_type="basic",
                depths=[1, 1, 1, 1],
                hidden_sizes=[64, 128, 256, 512],
                out_features=["stage4"],
            )
        ),
    }
    return {kind: randomize_norms(perturb_attention(model)) for kind, model in models.items()}


def train_step(model: nn.Module) -> None:
    model.train()
    out = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    tensor = (
        out if isinstance(out, torch.Tensor) else (out[-1] if isinstance(out, (list, tuple)) else out.feature_maps[-1])
    )
    tensor.square().mean().backward()


def bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in module.modules() if isinstance(m, _BatchNorm) for t in (m.running_mean, m.running_var)]


@pytest.fixture(scope="module")
def resnets() -> dict[str, nn.Module]:
    return resnet_models()


@pytest.mark.parametrize("kind", ["timm", "timm_features", "transformers"])
def test_frozen_stage_trains_only_its_attentions(resnets, kind):
    model = copy.deepcopy(resnets[kind])
    stem, stages = backbone_stages(model)
    assert len(stages) == 4
    freeze_stages(model, 1)
    frozen_stats, free_stats = bn_stats(stages[0]), bn_stats(stages[1])
    train_step(model)
    for module in (*stem, stages[0]):
        for name, p in module.named_parameters():
            assert (p.grad is not None) == any(part in name for part in ATTENTION), name
        assert all(not m.training for m in module.modules())  # eval after model.train(), KSM's BatchNorm too
    assert all(torch.equal(a, b) for a, b in zip(frozen_stats, bn_stats(stages[0])))
    assert not all(torch.equal(a, b) for a, b in zip(free_stats, bn_stats(stages[1])))
    assert all(p.grad is not None for p in stages[1].parameters())
    assert sum(p.grad.abs().sum() for n, p in stages[0].named_parameters() if p.grad is not None) > 0
    assert not any("KSM" in n for m in stem for n, _ in m.named_parameters())  # the stem has no FDConv
    assert any("KSM" in n for n, _ in stages[0].named_parameters())


def test_without_attention_training_the_stage_is_fully_frozen(resnets):
    model = copy.deepcopy(resnets["timm"])
    freeze_stages(model, 2, train_attention=False)
    train_step(model)
    assert all(p.grad is None for m in (model.conv1, model.layer1, model.layer2) for p in m.parameters())
    assert all(p.grad is not None for p in model.layer3.parameters())


def test_norm_eval_keeps_every_batchnorm_in_eval(resnets):
    model = copy.deepcopy(resnets["transformers"])
    freeze_stages(model, 1, norm_eval=True)
    stats = bn_stats(model)
    train_step(model)
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    assert all(torch.equal(a, b) for a, b in zip(stats, bn_stats(model)))  # no statistics move, KSM's included
    last = model.encoder.stages[3]
    assert last.training and all(p.grad is not None for p in last.parameters())  # affine parameters still train


def test_setting_survives_copy_and_pickle_and_can_be_undone(resnets):
    model = freeze_stages(copy.deepcopy(resnets["timm"]), 1)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        clone.train()
        assert not clone.layer1.training and clone.layer2.training
        assert clone.layer1[0].conv2.dft_weight.requires_grad is False
    freeze_stages(model, -1)
    model.train()
    assert model.layer1.training and all(p.requires_grad for p in model.parameters())


def test_transformers_swin_and_timm_convnext_stages():
    swin = FDConvSwinModel(
        FDConvSwinConfig(embed_dim=32, depths=[1, 1], num_heads=[1, 2], image_size=64, window_size=4)
    )
    freeze_stages(swin, 1)
    assert all(not p.requires_grad for p in swin.embeddings.parameters())
    assert {
        any(k in n for k in ATTENTION) for n, p in swin.encoder.layers[0].named_parameters() if p.requires_grad
    } == {True}
    assert all(p.requires_grad for p in swin.encoder.layers[1].parameters())
    convnext = timm.create_model("convnext_atto_fdconv")
    stem, stages = backbone_stages(convnext)
    assert stem == [convnext.stem] and stages[3] is convnext.stages[3]


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"num_stages must be in \[-1, 4\]"):
        freeze_stages(timm.create_model("resnet18_fdconv"), 5)
    with pytest.raises(TypeError, match="does not know the stages of Linear"):
        freeze_stages(nn.Linear(2, 2), 1)
