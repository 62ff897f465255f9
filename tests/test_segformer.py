"""FDConv SegFormer for transformers: native-checkpoint conversion, round trips, initialisation, Trainer, errors.

References are transformers' own SegFormer models with the same weights; checkpoints are small random
native models written with ``save_pretrained`` in both key layouts (old: ``mlp.dense1``, new: ``mlp.fc1``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fdconv_testing import perturb_attention, relative_error
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    ResNetConfig,
    ResNetForImageClassification,
    SegformerConfig,
    SegformerForImageClassification,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
    SegformerModel,
)

from fdconv_zoo import FDConv, spectrum_to_conv_weight
from fdconv_zoo.layers import frequency_group_map
from fdconv_zoo.transformers_models.segformer import (
    FDConvSegformerConfig,
    FDConvSegformerForImageClassification,
    FDConvSegformerForSemanticSegmentation,
    FDConvSegformerModel,
)

NATIVE_TO_FDCONV = {
    SegformerForSemanticSegmentation: FDConvSegformerForSemanticSegmentation,
    SegformerForImageClassification: FDConvSegformerForImageClassification,
    SegformerModel: FDConvSegformerModel,
}


def tiny_native_config(**overrides) -> SegformerConfig:
    """Hidden sizes > 16, so every Mix-FFN projection is a real FDConv; two blocks in the first stage."""
    args = dict(
        hidden_sizes=[32, 64, 96, 128],
        num_attention_heads=[1, 2, 3, 4],
        depths=[2, 1, 1, 1],
        mlp_ratios=[4, 4, 4, 4],
        decoder_hidden_size=32,
        num_labels=5,
        drop_path_rate=0.0,
    )
    return SegformerConfig(**{**args, **overrides})


@torch.no_grad()
def random_native(cls, seed: int = 0, **overrides):
    """A native model with every parameter random (norms and biases too), so no weight is trivially neutral."""
    torch.manual_seed(seed)
    model = cls(tiny_native_config(**overrides)).eval()
    for p in model.parameters():
        if p.dim() == 1:
            p.add_(torch.randn_like(p) * 0.2)
    return model


def attention_keys(model) -> set[str]:
    """State keys a native checkpoint cannot have: the FDConv attention branches."""
    return {k for k in model.state_dict() if ".KSM_Global." in k or ".KSM_Local." in k}


def outputs(model, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(pixel_values)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("native_cls", list(NATIVE_TO_FDCONV))
@pytest.mark.parametrize("original_format", [True, False], ids=["old_layout", "new_layout"])
def test_native_checkpoint_converts_at_load(tmp_path, pixels, native_cls, original_format):
    native = random_native(native_cls)
    native.save_pretrained(tmp_path, save_original_format=original_format)
    keys = load_file(tmp_path / "model.safetensors")
    assert any(k.endswith("mlp.dense1.weight") if original_format else k.endswith("mlp.fc1.weight") for k in keys)

    model, info = NATIVE_TO_FDCONV[native_cls].from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == attention_keys(model)  # reported, and initialised neutral
    assert info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    fdconvs = [m for m in model.modules() if isinstance(m, FDConv)]
    assert len(fdconvs) == 2 * sum(model.config.depths) and all(m.use_fdconv for m in fdconvs)
    assert relative_error(outputs(model, pixels), outputs(native, pixels)) <= 1e-4

    path = ("" if native_cls is SegformerModel else "segformer.") + "stages.0.blocks.1.mlp.fc1"
    native_fc1, fd_fc1 = native.get_submodule(path), model.get_submodule(path)
    recovered = spectrum_to_conv_weight(fd_fc1.dft_weight.detach(), fd_fc1.in_channels)[:, :, 0, 0]
    torch.testing.assert_close(recovered, native_fc1.weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("original_format", [True, False], ids=["old_layout", "new_layout"])
def test_narrow_projections_stay_plain_and_load_unchanged(tmp_path, pixels, original_format):
    """With fdconv_min_channels=32 the first stage's projections (32 <-> 128) are plain linears."""
    native = random_native(SegformerForSemanticSegmentation)
    native.save_pretrained(tmp_path, save_original_format=original_format)
    config = FDConvSegformerConfig.from_pretrained(tmp_path, fdconv_min_channels=32)
    model, info = FDConvSegformerForSemanticSegmentation.from_pretrained(
        tmp_path, config=config, output_loading_info=True
    )
    assert info["missing_keys"] == attention_keys(model) and info["unexpected_keys"] == set()
    fc1 = model.segformer.stages[0].blocks[1].mlp.fc1
    assert isinstance(fc1, FDConv) and not fc1.use_fdconv
    assert torch.equal(fc1.weight, native.segformer.stages[0].blocks[1].mlp.fc1.weight)
    assert model.segformer.stages[1].blocks[0].mlp.fc1.use_fdconv
    assert relative_error(outputs(model, pixels), outputs(native, pixels)) <= 1e-4


def test_hub_repo_id_loads_offline(hub_repo, tmp_path, pixels):
    """An nvidia/mit-b0-style ImageNet classifier from the (offline) Hub cache, fine-tuned for segmentation."""
    native = random_native(SegformerForImageClassification, num_labels=10)
    native.save_pretrained(tmp_path, save_original_format=True)
    hub_repo(
        "nvidia/mit-b0", {"config.json": tmp_path / "config.json", "model.safetensors": tmp_path / "model.safetensors"}
    )
    model = FDConvSegformerForSemanticSegmentation.from_pretrained(
        "nvidia/mit-b0", num_labels=3, ignore_mismatched_sizes=True
    )
    assert model.config.num_labels == 3 and model.config.model_type == "fdconv_segformer"
    encoder = outputs(model.segformer, pixels)
    assert relative_error(encoder, outputs(native.segformer, pixels)) <= 1e-4
    assert model(pixels).logits.shape == (2, 3, 16, 16)


def test_native_checkpoint_loads_exactly_neutral(tmp_path):
    """Everything the native checkpoint lacks is initialised by _init_weights after meta-device loading."""
    native = random_native(SegformerForSemanticSegmentation)
    native.save_pretrained(tmp_path)
    model = FDConvSegformerForSemanticSegmentation.from_pretrained(tmp_path)
    for name, module in model.named_modules():
        if not isinstance(module, FDConv):
            continue
        ksm = module.KSM_Global
        for head in ksm.heads():
            assert torch.count_nonzero(head.weight) == 0 and torch.count_nonzero(head.bias) == 0, name
        assert torch.count_nonzero(module.KSM_Local.conv.weight) == 0
        assert torch.equal(module.KSM_Local.norm.weight, torch.ones_like(module.KSM_Local.norm.weight))
        assert torch.count_nonzero(ksm.bn.running_mean) == 0 and torch.equal(
            ksm.bn.running_var, torch.ones_like(ksm.bn.running_var)
        )
        assert torch.equal(ksm.relu.scale, torch.ones(1)) and torch.equal(ksm.relu.bias, torch.zeros(1))
        assert torch.isfinite(ksm.fc.weight).all() and ksm.fc.weight.std() > 0  # drawn, not left as empty memory
        expected_groups = frequency_group_map(module.out_channels, module.in_channels, module.kernel_num)
        assert torch.equal(module.frequency_group, expected_groups), name
        with torch.no_grad():  # neutral: the per-sample weight is the static one for any input
            pooled = torch.randn(3, module.in_channels)
            channel, filt, _, group = ksm(pooled)
        assert torch.equal(channel, torch.ones_like(channel)) and torch.equal(filt, torch.ones_like(filt))
        torch.testing.assert_close(group, torch.full_like(group, 1 / module.kernel_num), rtol=0, atol=0)


@pytest.mark.parametrize("original_format", [True, False], ids=["old_layout", "new_layout"])
def test_save_and_reload_round_trip(tmp_path, pixels, original_format):
    config = FDConvSegformerConfig.from_dict(tiny_native_config().to_dict(), fdconv_kernel_num=8)
    torch.manual_seed(0)
    model = perturb_attention(FDConvSegformerForSemanticSegmentation(config)).eval()
    model.save_pretrained(tmp_path, save_original_format=original_format)
    saved = load_file(tmp_path / "model.safetensors")
    assert any(k.endswith("mlp.dense1.dft_weight" if original_format else "mlp.fc1.dft_weight") for k in saved)

    reloaded, info = AutoModelForSemanticSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded) is FDConvSegformerForSemanticSegmentation
    assert reloaded.config.fdconv_kernel_num == 8
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    reference = model.state_dict()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert torch.equal(outputs(reloaded, pixels), outputs(model, pixels))


def test_missing_attention_keys_are_initialised_neutral(tmp_path, pixels):
    """An FDConv checkpoint without some attention tensors: those start neutral, the loaded ones are kept."""
    config = FDConvSegformerConfig.from_dict(tiny_native_config().to_dict())
    torch.manual_seed(0)
    model = perturb_attention(FDConvSegformerModel(config)).eval()
    model.save_pretrained(tmp_path, save_original_format=False)
    state = load_file(tmp_path / "model.safetensors")
    dropped = "stages.1.blocks.0.mlp.fc2.KSM_Global.kernel_fc.weight"
    save_file(
        {k: v for k, v in state.items() if k != dropped}, tmp_path / "model.safetensors", metadata={"format": "pt"}
    )
    reloaded = FDConvSegformerModel.from_pretrained(tmp_path)
    assert torch.count_nonzero(reloaded.get_parameter(dropped)) == 0
    kept = "stages.1.blocks.0.mlp.fc2.KSM_Global.kernel_fc.bias"
    assert torch.equal(reloaded.get_parameter(kept), model.get_parameter(kept))
    bn = "stages.0.blocks.0.mlp.fc1.KSM_Global.bn.running_var"
    assert torch.equal(reloaded.get_buffer(bn), model.get_buffer(bn))


def test_from_scratch_model_is_the_native_model_it_wraps(pixels):
    """A freshly built FDConv model is neutral: its static weights in a native model give the same outputs."""
    config = FDConvSegformerConfig.from_dict(tiny_native_config().to_dict())
    torch.manual_seed(0)
    model = FDConvSegformerForImageClassification(config).eval()
    state = {}
    for key, value in model.state_dict().items():
        module_name, _, leaf = key.rpartition(".")
        if ".KSM_" in key:
            continue
        if leaf == "dft_weight":
            layer = model.get_submodule(module_name)
            value = spectrum_to_conv_weight(value, layer.in_channels)[:, :, 0, 0]
            key = f"{module_name}.weight"
        state[key] = value
    native = SegformerForImageClassification(tiny_native_config()).eval()
    native.load_state_dict(state)
    assert relative_error(outputs(model, pixels), outputs(native, pixels)) <= 1e-4
    fc1 = model.segformer.stages[2].blocks[0].mlp.fc1  # official FDConv init: kaiming-uniform(a=sqrt(5)) weight
    expected_std = 1 / (3 * fc1.in_channels) ** 0.5
    assert abs(spectrum_to_conv_weight(fc1.dft_weight.detach(), fc1.in_channels).std() / expected_std - 1) < 0.05


def test_config_registration_and_defaults(tmp_path):
    config = FDConvSegformerConfig()
    assert config.fdconv_kernel_num == 64 and config.fdconv_kwargs["kernel_num"] == 64
    assert isinstance(AutoConfig.for_model("fdconv_segformer"), FDConvSegformerConfig)
    small = FDConvSegformerConfig.from_dict(tiny_native_config().to_dict())
    assert type(AutoModel.from_config(small)) is FDConvSegformerModel
    assert type(AutoModelForImageClassification.from_config(small)) is FDConvSegformerForImageClassification
    assert type(AutoModelForSemanticSegmentation.from_config(small)) is FDConvSegformerForSemanticSegmentation
    small.save_pretrained(tmp_path)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, FDConvSegformerConfig)
    assert {**reloaded.to_dict(), "_name_or_path": ""} == small.to_dict()
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), SegformerImageProcessor)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(fdconv_kernel_num=0), "kernel_num must be >= 1"),
        (dict(fdconv_ksm_global_act="relu"), "ksm_global_act"),
        (dict(fdconv_param_ratio=0), "param_ratio"),
        (dict(fdconv_min_channels=-1), "fdconv_min_channels"),
    ],
)
def test_invalid_fdconv_settings_are_rejected(settings, message):
    # transformers configs report failed validators as StrictDataclassClassValidationError, naming the cause
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        FDConvSegformerConfig(**settings)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path):
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1])).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="this is a `resnet` checkpoint, but FDConvSegformerConfig reads `segformer`"):
        FDConvSegformerForSemanticSegmentation.from_pretrained(tmp_path)


def test_model_needs_fdconv_config():
    with pytest.raises(TypeError, match="needs an FDConvSegformerConfig"):
        FDConvSegformerModel(tiny_native_config())


def test_mismatched_num_labels(tmp_path):
    random_native(SegformerForSemanticSegmentation).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        FDConvSegformerForSemanticSegmentation.from_pretrained(tmp_path, num_labels=7)
    model = FDConvSegformerForSemanticSegmentation.from_pretrained(tmp_path, num_labels=7, ignore_mismatched_sizes=True)
    assert model.decode_head.classifier.weight.shape[0] == 7


def test_segmentation_loss_upsamples_and_ignores(pixels):
    config = FDConvSegformerConfig.from_dict(tiny_native_config().to_dict())
    torch.manual_seed(0)
    model = perturb_attention(FDConvSegformerForSemanticSegmentation(config)).eval()
    labels = torch.randint(0, 5, (2, 64, 64), generator=torch.Generator().manual_seed(2))
    labels[:, :20] = 255
    with torch.no_grad():
        out = model(pixels, labels=labels)
    assert out.logits.shape == (2, 5, 16, 16)
    upsampled = F.interpolate(out.logits, size=(64, 64), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(upsampled, labels, ignore_index=255)
    torch.testing.assert_close(out.loss, expected)
    valid = labels != 255  # independent of ignore_index: the mean negative log-likelihood over labelled pixels
    log_probs = upsampled.log_softmax(1).permute(0, 2, 3, 1)[valid]
    manual = -log_probs.gather(1, labels[valid][:, None]).mean()
    torch.testing.assert_close(out.loss, manual)


def _segmentation_dataset(n: int = 4):
    """Random 64x64 RGB images with 5-class masks whose top band is unlabelled (255)."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    masks = rng.integers(0, 5, (n, 64, 64), dtype=np.uint8)
    masks[:, :8] = 255  # an unlabelled band, ignored by the loss
    return Dataset.from_dict({"image": list(images), "mask": list(masks)})


def test_trainer_fine_tunes_saves_and_reloads(tmp_path, pixels):
    from transformers import Trainer, TrainingArguments

    native = random_native(SegformerForSemanticSegmentation, depths=[1, 1, 1, 1])
    native.save_pretrained(tmp_path / "native")
    model = FDConvSegformerForSemanticSegmentation.from_pretrained(tmp_path / "native")
    processor = SegformerImageProcessor(size={"height": 64, "width": 64})

    def transform(batch):
        encoded = processor(
            images=[np.asarray(i, dtype=np.uint8) for i in batch["image"]],
            segmentation_maps=[np.asarray(m, dtype=np.uint8) for m in batch["mask"]],
            return_tensors="pt",
        )
        return {"pixel_values": encoded["pixel_values"], "labels": encoded["labels"].long()}

    dataset = _segmentation_dataset().with_transform(transform)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    changed = {k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])}
    assert "segformer.stages.0.blocks.0.mlp.fc1.dft_weight" in changed
    assert "segformer.stages.0.blocks.0.mlp.fc1.KSM_Global.kernel_fc.weight" in changed  # attentions train

    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert isinstance(AutoImageProcessor.from_pretrained(checkpoint), SegformerImageProcessor)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(checkpoint)
    assert type(reloaded) is FDConvSegformerForSemanticSegmentation
    model.eval()
    assert torch.equal(outputs(reloaded, pixels), outputs(model, pixels))
