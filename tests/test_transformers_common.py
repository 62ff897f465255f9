"""FDConv ResNet / ConvNeXt / Swin for transformers: behaviour shared by the three families.

The reference is always transformers' native model with the same weights: tiny random native checkpoints
are written with ``save_pretrained`` and loaded as their FDConv variant. Sizes keep every FDConv layer a
real FDConv (more than 16 channels) and the suite fast.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from fdconv_testing import perturb_attention, relative_error
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import load_file, save_file
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    ConvNextBackbone,
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextImageProcessor,
    PreTrainedConfig,
    ResNetBackbone,
    ResNetConfig,
    ResNetForImageClassification,
    SwinBackbone,
    SwinConfig,
    SwinForImageClassification,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    ViTImageProcessor,
)

from fdconv_zoo import FDConv
from fdconv_zoo.layers import frequency_group_map
from fdconv_zoo.transformers_models.convnext import (
    FDConvConvNextBackbone,
    FDConvConvNextConfig,
    FDConvConvNextForImageClassification,
    FDConvConvNextModel,
)
from fdconv_zoo.transformers_models.resnet import (
    FDConvResNetBackbone,
    FDConvResNetConfig,
    FDConvResNetForImageClassification,
    FDConvResNetModel,
)
from fdconv_zoo.transformers_models.swin import (
    FDConvSwinBackbone,
    FDConvSwinConfig,
    FDConvSwinForImageClassification,
    FDConvSwinModel,
)

MAX_RELATIVE_ERROR = 1e-4
OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]


@dataclass(frozen=True)
class Family:
    name: str
    native_config: type[PreTrainedConfig]
    config: type[PreTrainedConfig]
    native_classifier: type
    classifier: type
    base_model: type
    native_backbone: type
    backbone: type
    image_processor: type
    image_processor_size: dict
    native_args: dict
    image_size: int
    fdconv_layers: int  # real FDConv layers of the tiny classifier

    def native(self, **overrides) -> PreTrainedConfig:
        return self.native_config(**{**self.native_args, **overrides})


FAMILIES = {
    family.name: family
    for family in (
        Family(
            "resnet",
            ResNetConfig,
            FDConvResNetConfig,
            ResNetForImageClassification,
            FDConvResNetForImageClassification,
            FDConvResNetModel,
            ResNetBackbone,
            FDConvResNetBackbone,
            ConvNextImageProcessor,
            {"shortest_edge": 32},
            dict(embedding_size=24, hidden_sizes=[80, 96, 112, 128], depths=[1, 1, 1, 1], num_labels=5),
            32,
            12,
        ),
        Family(
            "convnext",
            ConvNextConfig,
            FDConvConvNextConfig,
            ConvNextForImageClassification,
            FDConvConvNextForImageClassification,
            FDConvConvNextModel,
            ConvNextBackbone,
            FDConvConvNextBackbone,
            ConvNextImageProcessor,
            {"shortest_edge": 32},
            dict(hidden_sizes=[24, 32, 40, 48], depths=[2, 1, 1, 1], num_labels=5, layer_scale_init_value=0.5),
            32,
            10,
        ),
        Family(
            "swin",
            SwinConfig,
            FDConvSwinConfig,
            SwinForImageClassification,
            FDConvSwinForImageClassification,
            FDConvSwinModel,
            SwinBackbone,
            FDConvSwinBackbone,
            ViTImageProcessor,
            {"height": 32, "width": 32},
            dict(
                image_size=32,
                patch_size=2,
                embed_dim=24,
                depths=[2, 1, 1, 1],
                num_heads=[1, 2, 2, 4],
                window_size=2,
                num_labels=5,
            ),
            32,
            10,
        ),
    )
}
family_param = pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))


@torch.no_grad()
def random_native(cls, config: PreTrainedConfig, seed: int = 0):
    """A native model in eval mode whose every parameter and norm statistic is random (none trivially neutral)."""
    torch.manual_seed(seed)
    model = cls(config).eval()
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model


def pixels(family: Family, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, family.image_size, family.image_size, generator=torch.Generator().manual_seed(seed))


def fdconv_layers(model: torch.nn.Module) -> dict[str, FDConv]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FDConv) and m.use_fdconv}


@torch.no_grad()
def logits(model, x: torch.Tensor) -> torch.Tensor:
    return model(x).logits


def assert_neutral(layer: FDConv) -> None:
    """Exactly the freshly converted layer's attention state (FDConv.from_conv) and correct frequency groups."""
    ksm = layer.KSM_Global
    for head in ksm.heads():
        assert torch.count_nonzero(head.weight) == 0 and torch.count_nonzero(head.bias) == 0
    assert torch.equal(ksm.bn.weight, torch.ones_like(ksm.bn.weight)) and torch.count_nonzero(ksm.bn.bias) == 0
    assert torch.count_nonzero(ksm.bn.running_mean) == 0 and torch.equal(
        ksm.bn.running_var, torch.ones_like(ksm.bn.running_var)
    )
    assert ksm.relu.scale.item() == 1.0 and ksm.relu.bias.item() == 0.0
    assert torch.count_nonzero(layer.KSM_Local.conv.weight) == 0
    assert torch.equal(layer.KSM_Local.norm.weight, torch.ones_like(layer.KSM_Local.norm.weight))
    for conv in getattr(layer, "FBM", torch.nn.Module()).modules():
        if isinstance(conv, torch.nn.Conv2d):
            assert torch.count_nonzero(conv.weight) == 0 and torch.count_nonzero(conv.bias) == 0
    assert_frequency_groups(layer)


def assert_frequency_groups(layer: FDConv) -> None:
    rows, k = layer.out_channels * layer.kernel_size[0], layer.kernel_size[0]
    expected = frequency_group_map(rows, layer.in_channels * k, layer.kernel_num)
    assert layer.frequency_group.dtype == torch.int32 and torch.equal(layer.frequency_group, expected)


def native_checkpoint(family: Family, tmp_path: Path, cls=None, **overrides) -> tuple[torch.nn.Module, Path]:
    native = random_native(cls or family.native_classifier, family.native(**overrides))
    native.save_pretrained(tmp_path / "native")
    return native, tmp_path / "native"


# ------------------------------------------------------------------------------- native checkpoints
@family_param
def test_native_checkpoint_loads_as_fdconv_with_the_native_outputs(family, tmp_path):
    native, path = native_checkpoint(family, tmp_path)
    model = family.classifier.from_pretrained(path)

    assert type(model.config) is family.config and model.config.model_type == f"fdconv_{family.name}"
    assert model.config.fdconv_kernel_num == 64 and model.config.num_labels == 5  # paper default, native head
    layers = fdconv_layers(model)
    assert len(layers) == family.fdconv_layers and all(layer.kernel_num == 64 for layer in layers.values())
    x = pixels(family)
    with torch.no_grad():
        expected, actual = native(x, output_hidden_states=True), model(x, output_hidden_states=True)
    assert relative_error(actual.logits, expected.logits) <= MAX_RELATIVE_ERROR
    for got, want in zip(actual.hidden_states, expected.hidden_states, strict=True):
        assert relative_error(got, want) <= MAX_RELATIVE_ERROR


@family_param
def test_missing_attention_parameters_load_exactly_neutral(family, tmp_path):
    _, path = native_checkpoint(family, tmp_path)
    model, info = family.classifier.from_pretrained(path, output_loading_info=True)

    layers = fdconv_layers(model)
    attention_keys = {
        k for k in model.state_dict() if any(f".{part}." in k for part in ("KSM_Global", "KSM_Local", "FBM"))
    }
    assert set(info["missing_keys"]) == attention_keys and not info["unexpected_keys"] and not info["mismatched_keys"]
    for layer in layers.values():
        assert_neutral(layer)


@family_param
@pytest.mark.parametrize("cls_name", ["base_model", "backbone"])
def test_classifier_checkpoint_loads_into_base_model_and_backbone(family, cls_name, tmp_path):
    native, path = native_checkpoint(family, tmp_path)
    x = pixels(family)
    if cls_name == "base_model":
        model = family.base_model.from_pretrained(path)
        reference = getattr(native, native.base_model_prefix)
        with torch.no_grad():
            got, want = model(x).last_hidden_state, reference(x).last_hidden_state
        assert relative_error(got, want) <= MAX_RELATIVE_ERROR
    else:
        model = family.backbone.from_pretrained(path, out_features=OUT_FEATURES)
        reference = family.native_backbone.from_pretrained(path, out_features=OUT_FEATURES).eval()
        with torch.no_grad():
            got, want = model(x).feature_maps, reference(x).feature_maps
        assert len(got) == 4
        for a, b in zip(got, want, strict=True):
            assert relative_error(a, b) <= MAX_RELATIVE_ERROR
    assert len(fdconv_layers(model)) == family.fdconv_layers


@family_param
def test_native_checkpoint_from_the_hub_cache_with_its_image_processor(family, tmp_path, hub_repo):
    native, path = native_checkpoint(family, tmp_path)
    family.image_processor(size=family.image_processor_size).save_pretrained(path)
    repo = f"tiny/{family.name}"
    hub_repo(repo, {name: path / name for name in ("config.json", "model.safetensors", "preprocessor_config.json")})

    model = AutoModelForImageClassification.from_pretrained(repo)  # the native model: nothing hijacked
    assert type(model) is family.native_classifier
    model = family.classifier.from_pretrained(repo)
    processor = AutoImageProcessor.from_pretrained(repo)
    image = (torch.rand(family.image_size, family.image_size, 3) * 255).to(torch.uint8).numpy()
    inputs = processor(images=[image], return_tensors="pt")
    assert (
        relative_error(logits(model, inputs["pixel_values"]), logits(native, inputs["pixel_values"]))
        <= MAX_RELATIVE_ERROR
    )


# ------------------------------------------------------------------------------------- round trips
@family_param
def test_save_and_reload_round_trip_with_trained_attentions(family, tmp_path):
    _, path = native_checkpoint(family, tmp_path)
    model = perturb_attention(family.classifier.from_pretrained(path))
    model.save_pretrained(tmp_path / "fdconv")
    saved = load_file(tmp_path / "fdconv" / "model.safetensors")
    assert sum(k.endswith(".dft_weight") for k in saved) == family.fdconv_layers
    assert not any(k.endswith("frequency_group") for k in saved)  # non-persistent, recomputed at load

    reloaded, info = AutoModelForImageClassification.from_pretrained(tmp_path / "fdconv", output_loading_info=True)
    assert type(reloaded) is family.classifier and not any(info.values())
    x = pixels(family)
    assert torch.equal(logits(reloaded, x), logits(model, x))
    assert (
        relative_error(logits(model, x), logits(family.classifier.from_pretrained(path), x)) > 1e-3
    )  # attentions matter
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    for layer in fdconv_layers(reloaded).values():
        assert_frequency_groups(layer)


@family_param
def test_partial_fdconv_checkpoint_keeps_loaded_tensors_and_neutralises_the_rest(family, tmp_path):
    """Loaded tensors (KSM BatchNorm statistics included) survive initialisation; missing ones come out neutral."""
    _, path = native_checkpoint(family, tmp_path)
    model = perturb_attention(family.classifier.from_pretrained(path))
    with torch.no_grad():
        for layer in fdconv_layers(model).values():
            layer.KSM_Global.bn.running_mean.normal_()
            layer.KSM_Global.bn.running_var.uniform_(0.5, 2.0)
    model.save_pretrained(tmp_path / "fdconv", save_original_format=False)  # keys are module names (Swin)
    state = load_file(tmp_path / "fdconv" / "model.safetensors")
    dropped_layer = next(iter(fdconv_layers(model)))
    attention_prefixes = tuple(f"{dropped_layer}.{part}." for part in ("KSM_Global", "KSM_Local", "FBM"))
    partial = {k: v for k, v in state.items() if not k.startswith(attention_prefixes)}
    assert len(partial) < len(state)
    save_file(partial, tmp_path / "fdconv" / "model.safetensors", metadata={"format": "pt"})

    reloaded = family.classifier.from_pretrained(tmp_path / "fdconv")
    for name, layer in fdconv_layers(reloaded).items():
        if name == dropped_layer:
            assert_neutral(layer)
        else:
            original = model.get_submodule(name)
            for key, tensor in original.state_dict().items():
                assert torch.equal(layer.state_dict()[key], tensor), f"{name}.{key}"
            assert_frequency_groups(layer)


@family_param
def test_model_built_from_a_config_is_initialised_and_neutral(family):
    torch.manual_seed(0)
    config = family.config(**family.native_args, fdconv_kernel_num=8)
    model = family.classifier(config).eval()
    layers = fdconv_layers(model)
    assert len(layers) == family.fdconv_layers
    for layer in layers.values():
        assert layer.kernel_num == 8
        assert_neutral(layer)
        assert layer.dft_weight.abs().sum() > 0 and torch.isfinite(layer.dft_weight).all()
    assert torch.isfinite(logits(model, pixels(family))).all()


# ---------------------------------------------------------------------------- configs and the Auto API
@family_param
def test_config_registration_and_serialisation(family, tmp_path):
    config = family.config(**family.native_args, fdconv_kernel_num=16, fdconv_reduction=0.125)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is family.config and loaded.model_type == f"fdconv_{family.name}"
    assert (loaded.fdconv_kernel_num, loaded.fdconv_reduction) == (16, 0.125)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert type(AutoConfig.for_model(f"fdconv_{family.name}")) is family.config
    assert type(AutoModel.from_config(loaded)) is family.base_model
    assert type(AutoModelForImageClassification.from_config(loaded)) is family.classifier
    backbone = AutoBackbone.from_config(family.config(**family.native_args, out_features=OUT_FEATURES))
    assert type(backbone) is family.backbone and len(backbone(pixels(family)).feature_maps) == 4


@family_param
def test_native_config_becomes_fdconv_config_with_paper_defaults(family, tmp_path):
    family.native().save_pretrained(tmp_path)
    config = family.config.from_pretrained(tmp_path, fdconv_kernel_num=32)
    assert type(config) is family.config and config.model_type == f"fdconv_{family.name}"
    assert config.fdconv_kernel_num == 32 and config.fdconv_param_ratio == 1 and config.fdconv_use_ksm_local
    assert type(AutoConfig.from_pretrained(tmp_path)) is family.native_config  # AutoConfig keeps the native type


@family_param
@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(fdconv_kernel_num=0), "kernel_num must be >= 1"),
        (dict(fdconv_param_ratio=0), "param_ratio must be a positive integer"),
        (dict(fdconv_ksm_global_act="relu"), "ksm_global_act='relu'"),
        (dict(fdconv_ksm_local_act="softmax"), "ksm_local_act='softmax'"),
        (dict(fdconv_att_multi=3.0), "exact conversion needs att_multi=2"),
        (dict(fdconv_fbm_cfg={"k_lst": [2, 4]}), "unknown fbm_cfg keys"),
        (dict(fdconv_min_channels=-1), "fdconv_min_channels must be >= 0"),
        (dict(fdconv_kernel_num="64"), "fdconv_kernel_num"),
    ],
)
def test_invalid_fdconv_settings_are_rejected_when_the_config_is_built(family, settings, message):
    with pytest.raises(StrictDataclassError, match=message):  # what transformers configs raise for invalid fields
        family.config(**family.native_args, **settings)


@family_param
def test_checkpoint_of_another_architecture_is_rejected(family, tmp_path):
    other = next(f for f in FAMILIES.values() if f is not family)
    _, path = native_checkpoint(other, tmp_path)
    with pytest.raises(
        ValueError, match=f"this is a `{other.name}` checkpoint, but {family.config.__name__} reads `{family.name}`"
    ):
        family.classifier.from_pretrained(path)
    with pytest.raises(ValueError, match=f"this is a `{other.name}` checkpoint"):
        family.config(**family.native_args, model_type=other.name)


@family_param
def test_models_need_an_fdconv_config(family):
    native_config = family.native()
    with pytest.raises(TypeError, match=f"needs a {family.config.__name__}, got a {family.native_config.__name__}"):
        family.classifier(native_config)
    converted = family.config.from_dict(native_config.to_dict())
    assert type(converted) is family.config and converted.fdconv_kernel_num == 64
    assert len(fdconv_layers(family.classifier(converted))) == family.fdconv_layers


@family_param
def test_mismatched_num_labels_needs_ignore_mismatched_sizes(family, tmp_path, caplog):
    native, path = native_checkpoint(family, tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        family.classifier.from_pretrained(path, num_labels=3)

    transformers.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="transformers"):
            model, info = family.classifier.from_pretrained(
                path, num_labels=3, ignore_mismatched_sizes=True, output_loading_info=True
            )
    finally:
        transformers.logging.disable_propagation()
    assert {key for key, *_ in info["mismatched_keys"]} == {
        n for n, _ in model.named_parameters() if n.startswith("classifier")
    }
    assert "MISMATCH" in caplog.text  # transformers' standard load report, not a silent re-initialisation
    assert logits(model, pixels(family)).shape == (2, 3)
    with torch.no_grad():
        features = model.base_model(pixels(family)).pooler_output
        assert (
            relative_error(features, getattr(native, native.base_model_prefix)(pixels(family)).pooler_output)
            <= MAX_RELATIVE_ERROR
        )


@family_param
def test_classification_loss_follows_transformers_conventions(family):
    torch.manual_seed(0)
    model = family.classifier(family.config(**family.native_args))
    x, labels = pixels(family, batch=3), torch.tensor([0, 4, 2])
    out = model(pixel_values=x, labels=labels)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    out.loss.backward()
    kernel_heads = [layer.KSM_Global.kernel_fc.weight.grad for layer in fdconv_layers(model).values()]
    assert all(g is not None for g in kernel_heads) and any(g.abs().sum() > 0 for g in kernel_heads)


# ----------------------------------------------------------------------------------------- UperNet
@family_param
def test_upernet_with_an_fdconv_backbone_builds_runs_and_gives_a_loss(family, tmp_path):
    torch.manual_seed(0)
    backbone_config = family.config(**family.native_args, out_features=OUT_FEATURES)
    channels = family.backbone(backbone_config).channels
    config = UperNetConfig(
        backbone_config=backbone_config,
        hidden_size=32,
        auxiliary_in_channels=channels[2],
        auxiliary_channels=16,
        num_labels=4,
    )
    model = UperNetForSemanticSegmentation(config)
    assert type(model.backbone) is family.backbone and len(fdconv_layers(model.backbone)) == family.fdconv_layers

    x, labels = pixels(family), torch.randint(0, 4, (2, family.image_size, family.image_size))
    out = model(pixel_values=x, labels=labels)
    assert out.logits.shape == (2, 4, family.image_size, family.image_size) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.backbone.named_parameters() if n.endswith("dft_weight"))

    model.save_pretrained(tmp_path)
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path)
    assert type(reloaded.backbone) is family.backbone
    expected, actual = model.state_dict(), reloaded.state_dict()
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    model.eval()
    # Same tensors, same function; single-threaded oneDNN kernels in the UperNet head may round differently
    # for differently aligned copies (3e-10 seen), so the outputs are compared to float32 round-off.
    assert relative_error(logits(reloaded, x), logits(model, x)) < 1e-6


@family_param
def test_upernet_backbone_initialised_from_a_native_classification_checkpoint(family, tmp_path):
    """The paper's segmentation set-up: an ImageNet checkpoint, converted, as the UperNet backbone."""
    _, path = native_checkpoint(family, tmp_path)
    backbone = family.backbone.from_pretrained(path, out_features=OUT_FEATURES)
    config = UperNetConfig(
        backbone_config=backbone.config, hidden_size=32, auxiliary_in_channels=backbone.channels[2], num_labels=4
    )
    model = UperNetForSemanticSegmentation(config)
    model.backbone.load_state_dict(backbone.state_dict())
    model.eval()
    reference = family.native_backbone.from_pretrained(path, out_features=OUT_FEATURES).eval()
    x = pixels(family)
    with torch.no_grad():
        for got, want in zip(model.backbone(x).feature_maps, reference(x).feature_maps, strict=True):
            assert relative_error(got, want) <= MAX_RELATIVE_ERROR


@pytest.mark.slow
@family_param
def test_full_size_native_checkpoint_loads_with_the_native_outputs(family, tmp_path):
    """The default configs are the layouts of microsoft/resnet-50, facebook/convnext-tiny-224 and
    microsoft/swin-tiny-patch4-window7-224: random weights of that size, converted at load, at 224x224."""
    native, path = native_checkpoint(
        family, tmp_path, **{key: getattr(family.native_config(), key) for key in family.native_args}
    )
    model = family.classifier.from_pretrained(path)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert relative_error(logits(model, x), logits(native, x)) <= MAX_RELATIVE_ERROR
