"""timm ``mit_b0_fdconv`` ... ``mit_b5_fdconv``: pretrained loading of NVIDIA's MiT checkpoints, timm behaviour, errors.

The reference is transformers' ``SegformerForImageClassification`` with the same (random) weights. The
checkpoint is written in the layout of the ``nvidia/mit-b0`` Hub repo into the offline Hub cache, so the
test goes through timm's real pretrained path (``hf_hub_id`` -> ``hf_hub_download`` -> filter -> load).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from fdconv_testing import perturb_attention, relative_error
from safetensors.torch import save_file
from transformers import SegformerConfig, SegformerForImageClassification

import fdconv_zoo  # noqa: F401  (registers the models)
from fdconv_zoo import FDConv
from fdconv_zoo.timm_models.mit import segformer_to_timm_state_dict

# The nvidia/mit-b* Hub configs (hidden sizes, depths); all: heads (1, 2, 5, 8), SR (8, 4, 2, 1), MLP ratio 4.
NATIVE_MIT = {
    "mit_b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2]),
    "mit_b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2]),
    "mit_b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3]),
    "mit_b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3]),
    "mit_b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3]),
    "mit_b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3]),
}


def native_config(arch: str) -> SegformerConfig:
    return SegformerConfig(
        **NATIVE_MIT[arch],
        num_attention_heads=[1, 2, 5, 8],
        sr_ratios=[8, 4, 2, 1],
        mlp_ratios=[4, 4, 4, 4],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        num_labels=1000,
        drop_path_rate=0.0,
    )


@torch.no_grad()
def random_native_classifier(arch: str = "mit_b0", seed: int = 0) -> SegformerForImageClassification:
    torch.manual_seed(seed)
    model = SegformerForImageClassification(native_config(arch)).eval()
    for p in model.parameters():
        if p.dim() == 1:  # norms and biases random too, so every mapped tensor matters
            p.add_(torch.randn_like(p) * 0.2)
    return model


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def native_b0() -> SegformerForImageClassification:
    return random_native_classifier("mit_b0")


@pytest.fixture
def mit_b0_on_hub(tmp_path, hub_repo, native_b0) -> Path:
    """nvidia/mit-b0 as on the Hub: config.json + weights in the old (transformers <= 5.8) key layout."""
    native_b0.save_pretrained(tmp_path, save_original_format=True)
    hub_repo(
        "nvidia/mit-b0", {"config.json": tmp_path / "config.json", "model.safetensors": tmp_path / "model.safetensors"}
    )
    return tmp_path


@pytest.mark.parametrize("name", ["mit_b0_fdconv", "mit_b0_fdconv.in1k"])
def test_pretrained_tag_converts_nvidia_checkpoint(mit_b0_on_hub, native_b0, pixels, name):
    model = timm.create_model(name, pretrained=True).eval()
    assert model.pretrained_cfg["hf_hub_id"] == "nvidia/mit-b0" and model.pretrained_cfg["tag"] == "in1k"
    fdconvs = [m for m in model.modules() if isinstance(m, FDConv)]
    assert len(fdconvs) == 2 * 8 and all(m.use_fdconv for m in fdconvs)
    assert all(type(blk.mlp.dwconv) is nn.Conv2d for stage in model.stages for blk in stage.blocks)
    assert relative_error(logits(model, pixels), logits(native_b0, pixels)) <= 1e-4


def test_new_layout_checkpoint_via_pretrained_cfg_overlay(tmp_path, native_b0, pixels):
    native_b0.save_pretrained(tmp_path, save_original_format=False)
    model = timm.create_model(
        "mit_b0_fdconv", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))
    ).eval()
    assert relative_error(logits(model, pixels), logits(native_b0, pixels)) <= 1e-4


def test_pretrained_with_new_head_and_input_channels(mit_b0_on_hub, native_b0, pixels):
    model = timm.create_model("mit_b0_fdconv", pretrained=True, num_classes=10).eval()
    assert model.num_classes == 10 and model.get_classifier().out_features == 10
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(pixels), pre_logits=True)
        native_pooled = native_b0.segformer(pixels).last_hidden_state.mean((2, 3))
    assert relative_error(pooled, native_pooled) <= 1e-4

    gray = timm.create_model("mit_b0_fdconv", pretrained=True, in_chans=1).eval()
    assert gray.patch_embed.proj.weight.shape == (32, 1, 7, 7)
    assert logits(gray, pixels[:, :1]).shape == (2, 1000)


@pytest.mark.parametrize("arch", list(NATIVE_MIT))
def test_architecture_matches_native_config(arch):
    """Every tensor of nvidia/mit-bX maps onto the timm model with its shape (FDConv: its static weight shape).

    Both models are built on the meta device, so full-size B5 costs no memory or init time.
    """
    with torch.device("meta"):
        native = SegformerForImageClassification(native_config(arch))
    model = timm.create_model(f"{arch}_fdconv", device="meta")
    own = model.state_dict()
    mapped = segformer_to_timm_state_dict(native.state_dict(), model)
    for key, tensor in mapped.items():
        module_name, _, leaf = key.rpartition(".")
        module = model.get_submodule(module_name)
        if isinstance(module, FDConv) and leaf == "weight":
            assert module.use_fdconv and module.conv_weight_shape[:2] == tuple(tensor.shape), key
        else:
            assert own[key].shape == tensor.shape, key
    plain = {k for k in own if not any(part in k for part in (".KSM_Global.", ".KSM_Local.", ".dft_weight"))}
    assert plain <= set(mapped), sorted(plain - set(mapped))[:5]
    assert sum(isinstance(m, FDConv) for m in model.modules()) == 2 * sum(NATIVE_MIT[arch]["depths"])


def test_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = perturb_attention(timm.create_model("mit_b0_fdconv", num_classes=7, depths=(1, 1, 1, 1))).train()
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.count_nonzero(p.grad)]
    assert not no_grad, no_grad[:5]


def test_timm_model_api(pixels):
    model = timm.create_model("mit_b0_fdconv", num_classes=5, depths=(1, 1, 1, 1)).eval()
    features = model.forward_features(pixels)
    assert features.shape == (2, 256, 2, 2)
    assert model.forward_head(features, pre_logits=True).shape == (2, 256)
    assert logits(model, pixels).shape == (2, 5)
    model.reset_classifier(0)
    assert logits(model, pixels).shape == (2, 256)
    model.reset_classifier(3)
    assert logits(model, pixels).shape == (2, 3)
    four_channels = timm.create_model("mit_b0_fdconv", in_chans=4, depths=(1, 1, 1, 1)).eval()
    assert logits(four_channels, torch.randn(1, 4, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize(
    ("out_indices", "channels", "reductions"),
    [((0, 1, 2, 3), [32, 64, 160, 256], [4, 8, 16, 32]), ((1, 3), [64, 256], [8, 32])],
)
def test_features_only(pixels, out_indices, channels, reductions):
    model = timm.create_model("mit_b0_fdconv", features_only=True, out_indices=out_indices, depths=(1, 1, 1, 1)).eval()
    assert model.feature_info.channels() == channels and model.feature_info.reduction() == reductions
    with torch.no_grad():
        feats = model(pixels)
    assert [f.shape[1] for f in feats] == channels
    assert [64 // f.shape[-1] for f in feats] == reductions


def test_unknown_architecture_and_tag():
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("mit_b9_fdconv")
    with pytest.raises(RuntimeError, match="Invalid pretrained tag"):
        timm.create_model("mit_b0_fdconv.ade20k", pretrained=True)


def test_checkpoint_of_another_architecture(tmp_path):
    resnet_like = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}
    save_file(resnet_like, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"not a SegFormer/MiT .*conv1\.weight"):
        timm.create_model(
            "mit_b0_fdconv", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))
        )


def test_shape_mismatch_names_key_and_expected_shape(tmp_path):
    """An nvidia/mit-b1 checkpoint (wider) loaded as MiT-B0."""
    with torch.device("meta"):
        b1 = SegformerForImageClassification(native_config("mit_b1"))
    state = {k: torch.zeros(v.shape) for k, v in b1.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"stages\.0\.blocks\.0\.mlp\.fc1\.weight: shape \(256, 64\) .*expects \(128, 32, 1, 1\)"
    ):
        timm.create_model(
            "mit_b0_fdconv", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))
        )
