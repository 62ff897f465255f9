"""The timm FDConv zoo (ResNet, ConvNeXt, Swin) against timm's own base models.

The reference is always timm's base architecture: a pretrained FDConv model must compute its source
checkpoint's logits (loaded through timm's real Hub path from a hand-built offline cache), and the
backbone APIs must match the base model's. Deep variants are checked at reduced depth (same block
types and widths, same loading path) to keep the suite fast on CPU; ``-m slow`` adds full-size runs.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torch.nn as nn
from fdconv_testing import perturb_attention, randomize_norms, relative_error
from hub_cache import write_hub_repo
from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg, save_for_hf

from fdconv_zoo import FDConv, count_parameters
from fdconv_zoo.timm_models._builder import IMAGENET_TAG_PATTERN, save_fdconv_for_hf

RTOL = 1e-4

BASE_ARCHS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "convnext_atto",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224",
    "swin_base_patch4_window7_224",
]
# Fewer blocks for the deep variants (widths and block types unchanged); the same overrides are given to
# the source model, so the checkpoint still fits the FDConv model exactly.
REDUCED = {
    "resnet34": dict(layers=(1, 1, 2, 1)),
    "resnet101": dict(layers=(1, 1, 2, 1)),
    "resnet152": dict(layers=(1, 2, 2, 1)),
    "convnext_tiny": dict(depths=(1, 1, 2, 1)),
    "convnext_small": dict(depths=(1, 1, 2, 1)),
    "convnext_base": dict(depths=(1, 1, 2, 1)),
    "swin_small_patch4_window7_224": dict(depths=(2, 2, 2, 2)),
    "swin_base_patch4_window7_224": dict(depths=(2, 2, 2, 2)),
}
# One pretrained tag per architecture, covering 1k/12k/22k heads and non-224 source cfgs.
PRETRAINED = {
    "resnet18": "a1_in1k",
    "resnet34": "tv_in1k",
    "resnet50": "tv_in1k",
    "resnet101": "tv2_in1k",
    "resnet152": "a1h_in1k",
    "convnext_atto": "d2_in1k",
    "convnext_tiny": "fb_in1k",
    "convnext_small": "fb_in22k",
    "convnext_base": "clip_laion2b_augreg_ft_in12k_in1k",
    "swin_tiny_patch4_window7_224": "ms_in1k",
    "swin_small_patch4_window7_224": "ms_in22k",
    "swin_base_patch4_window7_224": "ms_in22k_ft_in1k",
}
OWN_ORG = "fdconv-zoo-test"


def is_swin(base: str) -> bool:
    return base.startswith("swin")


def input_for(base: str, chans: int = 3, full_size: bool = True) -> torch.Tensor:
    """64x64 images where the model allows; pretrained Swin has a fixed 224 input (one image, to save time)."""
    size, batch = (224, 1) if is_swin(base) and full_size else (64, 2)
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(0))


_published: dict[tuple[str, str], nn.Module] = {}


def publish_source(base: str, tag: str | None = None, full_depth: bool = False) -> nn.Module:
    """Write random weights of ``<base>`` (reduced if deep, unless ``full_depth``) as the Hub repo
    ``timm/<base>.<tag>`` — safetensors plus the config.json timm writes — and return the source model
    (eval mode), the reference. Each repo is written once per session."""
    tag = tag or PRETRAINED[base]
    if (base, tag) not in _published:
        source = timm.create_model(f"{base}.{tag}", **({} if full_depth else REDUCED.get(base, {})))
        randomize_norms(source).eval()
        with tempfile.TemporaryDirectory() as folder:
            save_for_hf(source, folder, safe_serialization=True)
            write_hub_repo(f"timm/{base}.{tag}", {n: Path(folder, n) for n in ("model.safetensors", "config.json")})
        _published[base, tag] = source
    return _published[base, tag]


def create_pretrained(base: str, **kwargs) -> nn.Module:
    """``<base>_fdconv.<tag>`` through timm's real pretrained path (offline Hub cache)."""
    return timm.create_model(f"{base}_fdconv.{PRETRAINED[base]}", pretrained=True, **REDUCED.get(base, {}), **kwargs)


# --------------------------------------------------------------------------------------------- registry
def test_registered_architectures():
    assert sorted(timm.list_models("*fdconv*", exclude_filters=["mit*"])) == sorted(f"{b}_fdconv" for b in BASE_ARCHS)


@pytest.mark.parametrize("base", BASE_ARCHS)
def test_pretrained_tags_mirror_timm(base):
    """Every ImageNet-head tag of the base model whose weights are on timm's Hub org, in timm's order."""
    expected = [
        cfg.tag
        for cfg in get_arch_pretrained_cfgs(base).values()
        if re.search(IMAGENET_TAG_PATTERN, cfg.tag) and cfg.hf_hub_id.startswith("timm/")
    ]
    cfgs = get_arch_pretrained_cfgs(f"{base}_fdconv")
    assert [c.tag for c in cfgs.values()] == expected and expected
    for cfg in cfgs.values():
        source = get_pretrained_cfg(f"{base}.{cfg.tag}")
        assert cfg.hf_hub_id == f"timm/{base}.{cfg.tag}"
        assert cfg.url is None
        for key in (
            "num_classes",
            "input_size",
            "mean",
            "std",
            "crop_pct",
            "interpolation",
            "classifier",
            "first_conv",
            "license",
        ):
            assert getattr(cfg, key) == getattr(source, key), key
    if re.search(IMAGENET_TAG_PATTERN, get_pretrained_cfg(base).tag):
        assert get_pretrained_cfg(f"{base}_fdconv").tag == get_pretrained_cfg(base).tag


def test_resnet50_parameter_count_matches_paper_backbone():
    """The official ResNet_FDConv backbone adds 3,647,120 parameters over ResNet-50."""
    added = count_parameters(timm.create_model("resnet50_fdconv", num_classes=0)) - count_parameters(
        timm.create_model("resnet50", num_classes=0)
    )
    assert added == 3_647_120


@pytest.mark.parametrize(
    "base, expected",
    [
        ("resnet18", dict(k1=0, k3=16)),  # BasicBlock conv1/conv2; stem and downsample plain
        ("resnet50", dict(k1=32, k3=16)),
        ("convnext_atto", dict(k1=24, k3=0)),  # conv_mlp: NCHW 1x1 FDConv
        ("convnext_tiny", dict(k1=10, k3=0)),  # reduced: 5 blocks
        ("swin_tiny_patch4_window7_224", dict(k1=24, k3=0)),
    ],
)
def test_fdconv_placement(base, expected):
    model = timm.create_model(f"{base}_fdconv", **REDUCED.get(base, {}))
    fdconvs = {n: m for n, m in model.named_modules() if isinstance(m, FDConv)}
    assert all(m.use_fdconv and m.kernel_num == 64 for m in fdconvs.values())
    assert sum(m.kernel_size == (1, 1) for m in fdconvs.values()) == expected["k1"]
    assert sum(m.kernel_size == (3, 3) for m in fdconvs.values()) == expected["k3"]
    assert all(hasattr(m, "FBM") == (m.kernel_size == (3, 3)) for m in fdconvs.values())
    if base.startswith("resnet"):
        assert all(re.fullmatch(r"layer\d\.\d+\.conv[123]", n) for n in fdconvs)
        assert type(model.conv1) is nn.Conv2d
    else:
        assert all(n.endswith(("mlp.fc1", "mlp.fc2")) for n in fdconvs)
        assert all(m.token_layout != (base == "convnext_atto") for m in fdconvs.values())


# ----------------------------------------------------------------------------------- generic timm checks
def generic_kwargs(base: str) -> dict:
    """One block per stage (block types and widths kept: the FDConv cost is per layer, in its weights), no
    stochastic depth (a dropped branch gets no gradient); Swin at 64x64 (timm pads its windows)."""
    if base.startswith("resnet"):
        return dict(layers=(1, 1, 1, 1))
    return dict(depths=(1, 1, 1, 1), drop_path_rate=0.0, **(dict(img_size=64) if is_swin(base) else {}))


@pytest.mark.parametrize("base", BASE_ARCHS)
def test_generic_timm_checks(base):
    """Forward, backward with a gradient on every parameter, num_classes / in_chans, head API."""
    torch.manual_seed(0)
    model = timm.create_model(f"{base}_fdconv", num_classes=7, in_chans=1, **generic_kwargs(base))
    # randomize_: timm zero-inits the last BN of each ResNet block, which would cut every gradient into it
    perturb_attention(randomize_norms(model)).train()
    x = input_for(base, chans=1, full_size=False)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # At small test inputs the finest FBM band of a deep stage is empty (its maps are a few pixels wide), so
    # that band's attention conv gets zero gradient by construction; every other parameter must get one.
    zero = [n for n, g in grads.items() if not g.abs().sum() > 0 and "FBM.freq_weight_conv_list" not in n]
    assert not zero, zero[:10]
    fbm = [g for n, g in grads.items() if "FBM" in n]
    assert not fbm or any(g.abs().sum() > 0 for g in fbm)

    model.eval()
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre_logits.shape == (2, model.num_features)
        model.reset_classifier(0)
        assert relative_error(model(x), pre_logits) < 1e-6
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)


@pytest.mark.parametrize("base", ["resnet18", "convnext_atto", "swin_tiny_patch4_window7_224"])
def test_grad_checkpointing_computes_the_same(base):
    model = perturb_attention(timm.create_model(f"{base}_fdconv", **generic_kwargs(base))).eval()
    x = input_for(base, full_size=False)[:1].requires_grad_()
    with torch.no_grad():
        ref = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    assert relative_error(out.detach(), ref) < 1e-6 and x.grad is not None


def test_torch_compile_smoke():  # ~1 min with a cold inductor cache on 2 CPU cores
    model = perturb_attention(timm.create_model("convnext_atto_fdconv")).eval()
    x = input_for("convnext_atto")[:1]
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model)(x)
    assert relative_error(out, ref) < 1e-4


# --------------------------------------------------------------------------------- pretrained (offline)
@pytest.mark.parametrize("base", BASE_ARCHS)
def test_pretrained_equals_source_logits(base):
    source = publish_source(base)
    model = create_pretrained(base).eval()
    assert isinstance(model, type(source))
    x = input_for(base)
    with torch.no_grad():
        ref, out = source(x), model(x)
    assert out.shape == ref.shape == (len(x), source.num_classes)
    assert relative_error(out, ref) <= RTOL


@pytest.mark.slow
@pytest.mark.parametrize("base", list(REDUCED))
def test_pretrained_equals_source_logits_full_depth(base):
    """The variants the fast suite checks at reduced depth, at full depth (another tag, so another repo)."""
    tag = next(t for t in (c.tag for c in get_arch_pretrained_cfgs(f"{base}_fdconv").values()) if t != PRETRAINED[base])
    source = publish_source(base, tag, full_depth=True)
    model = timm.create_model(f"{base}_fdconv.{tag}", pretrained=True).eval()
    x = input_for(base)[:1]
    with torch.no_grad():
        assert relative_error(model(x), source(x)) <= RTOL


@pytest.mark.parametrize("base", ["resnet18", "convnext_atto"])
def test_pretrained_adapts_head_and_stem_like_timm(base):
    """num_classes and in_chans adaptation are timm's: compare with the base model loaded from the same repo."""
    publish_source(base)
    kwargs = dict(num_classes=5, in_chans=1)
    ref_model = timm.create_model(f"{base}.{PRETRAINED[base]}", pretrained=True, **kwargs).eval()
    model = create_pretrained(base, **kwargs).eval()
    x = input_for(base, chans=1)
    with torch.no_grad():
        assert model(x).shape == (len(x), 5)
        assert (
            relative_error(
                model.forward_head(model.forward_features(x), pre_logits=True),
                ref_model.forward_head(ref_model.forward_features(x), pre_logits=True),
            )
            <= RTOL
        )


@pytest.mark.parametrize("base", ["resnet18", "convnext_atto", "convnext_tiny", "swin_tiny_patch4_window7_224"])
def test_features_only_matches_base_model(base):
    publish_source(base)
    ref_model = timm.create_model(f"{base}.{PRETRAINED[base]}", pretrained=True, features_only=True).eval()
    model = create_pretrained(base, features_only=True).eval()
    assert type(model) is type(ref_model)
    assert model.feature_info.channels() == ref_model.feature_info.channels()
    assert model.feature_info.reduction() == ref_model.feature_info.reduction()
    x = input_for(base)
    with torch.no_grad():
        feats, ref_feats = model(x), ref_model(x)
    assert len(feats) == len(ref_feats) == len(model.feature_info.channels())
    for f, r, c in zip(feats, ref_feats, model.feature_info.channels()):
        assert f.shape == r.shape
        assert f.shape[-1 if is_swin(base) else 1] == c  # Swin keeps timm's NHWC layout
        assert relative_error(f, r) <= RTOL


@pytest.mark.parametrize("base", ["resnet18", "convnext_tiny", "swin_tiny_patch4_window7_224"])
def test_forward_intermediates_matches_base_model(base):
    source = publish_source(base)
    model = create_pretrained(base).eval()
    x = input_for(base)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        ref_final, ref_inter = source.forward_intermediates(x)
    assert relative_error(final, ref_final) <= RTOL
    assert len(inter) == len(ref_inter)
    assert all(i.shape == r.shape and relative_error(i, r) <= RTOL for i, r in zip(inter, ref_inter))


def _save_own_repo(model: nn.Module, repo_id: str, tmp_path: Path) -> dict:
    save_fdconv_for_hf(model, tmp_path / "export")
    write_hub_repo(repo_id, {n: tmp_path / "export" / n for n in ("model.safetensors", "config.json")})
    return json.loads((tmp_path / "export" / "config.json").read_text())


@pytest.mark.parametrize("base", ["resnet18", "convnext_atto", "swin_tiny_patch4_window7_224"])
def test_hf_hub_loads_converted_checkpoint(base, tmp_path):
    publish_source(base)
    model = perturb_attention(create_pretrained(base, fdconv_cfg=dict(kernel_num=8))).eval()
    repo_id = f"{OWN_ORG}/{base}_fdconv.{PRETRAINED[base]}"
    config = _save_own_repo(model, repo_id, tmp_path)
    assert config["architecture"] == f"{base}_fdconv"
    assert "num_classes" not in config.get("model_args", {})
    assert config["model_args"]["fdconv_cfg"] == dict(kernel_num=8)
    assert any(
        k.endswith(".dft_weight") for k in safetensors.torch.load_file(tmp_path / "export" / "model.safetensors")
    )

    loaded = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    assert loaded.pretrained_cfg["hf_hub_id"] == repo_id
    assert all(m.kernel_num == 8 for m in loaded.modules() if isinstance(m, FDConv))
    x = input_for(base)
    with torch.no_grad():
        assert relative_error(loaded(x), model(x)) <= 1e-6


def test_transformers_timm_wrapper_loads_fdconv_repo(tmp_path):
    from transformers import AutoModelForImageClassification

    publish_source("resnet18")
    model = perturb_attention(create_pretrained("resnet18", in_chans=1, global_pool="max")).eval()
    repo_id = f"{OWN_ORG}/resnet18_fdconv.wrapper"
    config = _save_own_repo(model, repo_id, tmp_path)
    assert config["model_args"] == {"in_chans": 1, "global_pool": "max"}  # num_classes dropped, the rest kept
    wrapped = AutoModelForImageClassification.from_pretrained(repo_id).eval()
    assert type(wrapped).__name__ == "TimmWrapperForImageClassification"
    x = input_for("resnet18")[:, :1]
    with torch.no_grad():
        assert relative_error(wrapped(pixel_values=x).logits, model(x)) <= 1e-6
        assert relative_error(timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()(x), model(x)) <= 1e-6


# ------------------------------------------------------------------------------------------- bad input
def test_unknown_tag_and_architecture():
    with pytest.raises(RuntimeError, match=r"Invalid pretrained tag \(nope\) for resnet50_fdconv"):
        timm.create_model("resnet50_fdconv.nope", pretrained=True)
    with pytest.raises(RuntimeError, match=r"Unknown model \(resnet51_fdconv\)"):
        timm.create_model("resnet51_fdconv")


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(
        ValueError,
        match=r"resnet18\.safetensors into resnet50_fdconv: layer1\.0\.conv1\.weight: shape "
        r"\(64, 64, 3, 3\) does not match the model, which expects \(64, 64, 1, 1\)",
    ):
        timm.create_model(
            "resnet50_fdconv", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), layers=(1, 1, 1, 1)
        )

    path = tmp_path / "convnext.safetensors"
    safetensors.torch.save_file(timm.create_model("convnext_atto").state_dict(), path)
    # Refused before any tensor is copied, naming the counts and the first missing and unexpected keys.
    with pytest.raises(
        ValueError,
        match=r"(?s)into swin_tiny_patch4_window7_224_fdconv: it leaves \d+ of the model's \d+ tensors "
        r"unset \(patch_embed\.proj\.weight.*keys the model does not have \(.*stages\.0",
    ):
        timm.create_model(
            "swin_tiny_patch4_window7_224_fdconv", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )


def test_checkpoint_with_wrong_shapes(tmp_path):
    state = timm.create_model("convnext_atto").state_dict()
    state["stages.1.blocks.0.mlp.fc2.weight"] = state["stages.1.blocks.0.mlp.fc2.weight"][:40]
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(state, path)
    with pytest.raises(
        ValueError,
        match=r"stages\.1\.blocks\.0\.mlp\.fc2\.weight: shape \(40, 320, 1, 1\) does not "
        r"match the model, which expects \(80, 320, 1, 1\)",
    ):
        timm.create_model("convnext_atto_fdconv", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_save_rejects_feature_wrappers(tmp_path):
    with pytest.raises(TypeError, match="without features_only"):
        save_fdconv_for_hf(timm.create_model("resnet18_fdconv", features_only=True), tmp_path)
