"""fdconv_zoo.viz: the Fourier-disjoint weight groups, the FBM maps, and the figures drawn from them."""

import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
from fdconv_testing import perturb_attention, relative_error
from PIL import Image

from fdconv_zoo import FDConv, viz


def converted(cin=64, cout=64, k=3, seed=0, **kwargs) -> tuple[nn.Conv2d, FDConv]:
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    return conv, FDConv.from_conv(conv, **kwargs)


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        assert im.size[0] > 200 and im.size[1] > 200
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]  # no temp left


# ----------------------------------------------------------------------------------- weight groups
@pytest.mark.parametrize("kernel_num", [8, 64])
def test_fdconv_groups_are_orthogonal_unlike_upcycled_experts(kernel_num):
    """The paper's claim on a converted 3x3 layer: disjoint spectra give orthogonal group weights (Parseval)."""
    _, layer = converted(kernel_num=kernel_num)
    cos = viz.group_cosine_similarity(layer)
    assert cos.shape == (kernel_num, kernel_num)
    torch.testing.assert_close(cos.diagonal(), torch.ones(kernel_num, dtype=cos.dtype), rtol=0, atol=1e-12)
    assert (cos - torch.eye(kernel_num, dtype=cos.dtype)).abs().max() < 1e-5
    # The comparison: KN experts upcycled from the same weight are nearly the same weight, cosine ~1/(1 + 0.1²).
    ref = viz.reference_cosine_similarity(layer, noise=0.1)
    off = ref[~torch.eye(kernel_num, dtype=torch.bool)]
    assert (off - 1 / 1.01).abs().max() < 5e-3


def test_split_hermitian_pairs_are_the_only_overlap():
    """1x1 layers of power-of-two width: official group boundaries cut tied (r, 0) / (-r, 0) bins of the
    self-conjugate columns, and exactly those group pairs share a frequency (nonzero cosine)."""
    _, layer = converted(64, 64, 1, kernel_num=64)
    cos = viz.group_cosine_similarity(layer)
    groups = layer.frequency_group.long()
    rows, n2 = groups.shape
    neg = (-torch.arange(rows)) % rows
    expected = torch.zeros(64, 64, dtype=torch.bool)
    for c in (0, n2 - 1):  # 64 columns: the zero and the Nyquist column hold both +f and -f
        a, b = groups[:, c], groups[neg, c]
        expected[a[a != b], b[a != b]] = True
    assert expected.any()  # the grouping does split such pairs here (else this test checks nothing)
    overlap = (cos.abs() > 1e-9) & ~torch.eye(64, dtype=torch.bool)
    assert torch.equal(overlap, expected | expected.T)


@pytest.mark.parametrize("kernel_num,param_ratio", [(8, 1), (64, 1), (7, 1), (4, 2)])
def test_group_weights_sum_to_the_source_conv(kernel_num, param_ratio):
    conv, layer = converted(64, 48, 3, kernel_num=kernel_num, param_ratio=param_ratio)
    groups = viz.group_frequency_responses(layer)
    assert groups.shape == (kernel_num, 48, 64, 3, 3) and groups.dtype == torch.float64
    assert relative_error(groups.sum(0), conv.weight.detach()) < 1e-6  # dft_weight is float32
    images = viz.group_frequency_responses(layer, [0, kernel_num - 1], as_image=True)
    assert images.shape == (2, 48 * 3, 64 * 3)
    torch.testing.assert_close(images[1].view(48, 3, 64, 3).transpose(1, 2), groups[-1])


def test_group_weights_compose_the_layers_dynamic_weight():
    """The layer's own spectral_weight with any group attention a is sum_g KN * a_g * W_g (P = 1)."""
    _, layer = converted(32, 48, 3, kernel_num=8)
    perturb_attention(layer)
    att = torch.rand(3, 8, generator=torch.Generator().manual_seed(0)) / 4
    images = viz.group_frequency_responses(layer, as_image=True)
    expected = torch.einsum("bg,grc->brc", att.double() * 8, images)
    assert relative_error(layer.spectral_weight(att), expected) < 1e-5


def test_group_functions_reject_plain_layers():
    with pytest.raises(TypeError, match="FDConv"):
        viz.group_frequency_responses(nn.Conv2d(64, 64, 3))
    with pytest.raises(ValueError, match="use_fdconv"):
        viz.group_cosine_similarity(FDConv(8, 8, 3))  # too few channels: a plain convolution
    with pytest.raises(ValueError, match="kernel_num=8"):
        viz.group_frequency_responses(converted(kernel_num=8)[1], [8])


# ------------------------------------------------------------------------------------------- FBM
def test_fbm_maps_are_neutral_on_a_converted_layer():
    _, layer = converted(kernel_num=8)
    x = torch.randn(1, 64, 20, 28)
    maps = viz.fbm_maps(layer, x)
    assert maps.shape == (1, 3, 1, 20, 28)  # (B, len(k_list), spatial groups, H, W)
    assert torch.equal(maps, torch.ones_like(maps))
    assert viz.fbm_lowpass_images(layer, x[0]).shape == (1, 3, 64, 20, 28)  # (C, H, W) is one sample


def test_fbm_maps_and_bands_rebuild_the_fbm_output():
    """Independent of the FBM's telescoped form: sum_j a_j * band_j + lowest band."""
    _, layer = converted(kernel_num=8)
    perturb_attention(layer)
    x = torch.randn(2, 64, 20, 28)
    maps, lows = viz.fbm_maps(layer, x), viz.fbm_lowpass_images(layer, x)
    assert not torch.allclose(maps, torch.ones_like(maps))
    previous = torch.cat([x[:, None], lows[:, :-1]], 1)
    rebuilt = (maps * (previous - lows)).sum(1) + lows[:, -1]  # one spatial group: maps broadcast over C
    with torch.no_grad():
        assert relative_error(rebuilt, layer.FBM(x)) < 1e-5
    # the low-pass parts really are low-pass: the k=8 part of a checkerboard (Nyquist only) is zero
    checker = (torch.arange(20)[:, None] + torch.arange(28)[None]).remainder(2).float().mul(2).sub(1)
    lows = viz.fbm_lowpass_images(layer, checker.expand(1, 64, 20, 28))
    assert lows.abs().max() < 1e-5


def test_fbm_functions_reject_layers_without_fbm_and_wrong_inputs():
    _, pointwise = converted(64, 64, 1, kernel_num=8)
    with pytest.raises(ValueError, match="no frequency band modulation"):
        viz.fbm_maps(pointwise, torch.randn(1, 64, 8, 8))
    _, layer = converted(kernel_num=8)
    with pytest.raises(ValueError, match=r"\(B, 64, H, W\)"):
        viz.fbm_maps(layer, torch.randn(1, 32, 8, 8))


# ---------------------------------------------------------------------------------------- figures
def test_group_figure_is_written_once_unless_overwrite(tmp_path):
    _, layer = converted(kernel_num=8)
    path = viz.plot_group_frequency_responses(layer, tmp_path / "groups.png")
    assert path == tmp_path / "groups.png"
    assert_png(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        viz.plot_group_frequency_responses(layer, path)
    assert path.read_bytes() == before
    viz.plot_group_frequency_responses(layer, path, groups=[1, 6], overwrite=True)
    assert_png(path)
    assert path.read_bytes() != before
    with pytest.raises(ValueError, match=r"\.png"):
        viz.plot_group_frequency_responses(layer, tmp_path / "groups.pdf")
    with pytest.raises(ValueError, match=r"0\.\.7"):
        viz.plot_group_frequency_responses(layer, tmp_path / "other.png", groups=[8])


def test_fbm_figure_is_written_once_unless_overwrite(tmp_path):
    _, layer = converted(kernel_num=8)
    perturb_attention(layer)
    path = viz.plot_fbm_maps(layer, torch.randn(1, 64, 16, 16).relu(), tmp_path / "sub" / "fbm.png")
    assert_png(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        viz.plot_fbm_maps(layer, torch.randn(1, 64, 16, 16), path)
    with pytest.raises(ValueError, match="one sample"):
        viz.plot_fbm_maps(layer, torch.randn(2, 64, 16, 16), tmp_path / "two.png")


def test_save_demo_figures_on_a_timm_model(tmp_path):
    torch.manual_seed(0)
    model = perturb_attention(
        timm.create_model("resnet18_fdconv", layers=(1, 1, 1, 1), channels=(32, 64, 96, 128), num_classes=10)
    )
    model.train()
    first = model.layer1[0].conv1
    paths = viz.save_demo_figures(model, torch.randn(3, 32, 32), tmp_path)
    assert [p.name for p in paths] == ["group_responses.png", "fbm_maps.png"]
    for p in paths:
        assert_png(p)
    assert model.training and not first._forward_hooks  # mode restored, hook removed
    with pytest.raises(FileExistsError, match="overwrite=True"):
        viz.save_demo_figures(model, torch.randn(1, 3, 32, 32), tmp_path)
    with pytest.raises(ValueError, match="no FDConv layer with frequency band modulation"):
        viz.save_demo_figures(nn.Sequential(nn.Conv2d(3, 8, 3)), torch.randn(1, 3, 8, 8), tmp_path / "x")


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    _, layer = converted(kernel_num=8)
    assert viz.group_cosine_similarity(layer).shape == (8, 8)  # the tensor functions need torch only
    with pytest.raises(ImportError, match=r"pip install 'fdconv-zoo\[viz\]'"):
        viz.plot_group_frequency_responses(layer, tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


def test_importing_the_package_does_not_import_matplotlib():
    code = "import sys, fdconv_zoo, fdconv_zoo.viz; sys.exit('matplotlib' in sys.modules)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0
