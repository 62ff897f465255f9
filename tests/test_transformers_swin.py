"""FDConv Swin for transformers: FDConv placement (the block MLPs) and the Hub's old key layout."""

import torch
from fdconv_testing import perturb_attention, relative_error
from safetensors.torch import load_file
from test_transformers_common import FAMILIES, OUT_FEATURES, random_native
from transformers import SwinBackbone, SwinConfig

from fdconv_zoo import FDConv
from fdconv_zoo.transformers_models.swin import FDConvSwinBackbone, FDConvSwinConfig, FDConvSwinModel

SWIN = FAMILIES["swin"]


def test_only_the_block_mlps_are_token_layout_fdconv():
    model = FDConvSwinModel(FDConvSwinConfig(**SWIN.native_args))
    layers = {name: m for name, m in model.named_modules() if isinstance(m, FDConv)}
    assert len(layers) == 2 * 5
    assert all(
        name.endswith(("mlp.fc1", "mlp.fc2")) and layer.token_layout and layer.use_fdconv
        for name, layer in layers.items()
    )
    attention = model.encoder.layers[0].blocks[1].attention
    assert all(type(getattr(attention, p)) is torch.nn.Linear for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert type(model.encoder.layers[0].downsample.reduction) is torch.nn.Linear


def test_checkpoints_keep_the_hub_key_layout(tmp_path):
    """Like native Swin, saving writes the Hub layout (`intermediate.dense`/`output.dense`) unless told otherwise."""
    native = random_native(SWIN.native_classifier, SWIN.native())
    native.save_pretrained(tmp_path / "native")
    assert any(".intermediate.dense.weight" in key for key in load_file(tmp_path / "native" / "model.safetensors"))
    model = perturb_attention(SWIN.classifier.from_pretrained(tmp_path / "native"))

    model.save_pretrained(tmp_path / "hub-layout")
    model.save_pretrained(tmp_path / "module-layout", save_original_format=False)
    hub_keys = load_file(tmp_path / "hub-layout" / "model.safetensors").keys()
    module_keys = load_file(tmp_path / "module-layout" / "model.safetensors").keys()
    assert "swin.encoder.layers.0.blocks.0.intermediate.dense.dft_weight" in hub_keys
    assert "swin.encoder.layers.0.blocks.0.output.dense.KSM_Global.kernel_fc.weight" in hub_keys
    assert "swin.encoder.layers.0.blocks.0.mlp.fc1.dft_weight" in module_keys
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).logits
        for folder in ("hub-layout", "module-layout"):
            assert torch.equal(SWIN.classifier.from_pretrained(tmp_path / folder)(x).logits, expected)


def test_native_backbone_checkpoint_loads_into_the_fdconv_backbone(tmp_path):
    """A `SwinBackbone` checkpoint has its own key prefixes (no `swin.`), handled as transformers does for it."""
    native = random_native(SwinBackbone, SwinConfig(**{**SWIN.native_args, "out_features": OUT_FEATURES}))
    native.save_pretrained(tmp_path)
    assert any(key.startswith("encoder.") for key in load_file(tmp_path / "model.safetensors"))
    model, info = FDConvSwinBackbone.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and all("KSM_" in key for key in info["missing_keys"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for got, want in zip(model(x).feature_maps, native(x).feature_maps, strict=True):
            assert relative_error(got, want) <= 1e-4
