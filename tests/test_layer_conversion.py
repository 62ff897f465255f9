"""Exact conversion: a converted FDConv computes its source layer's function at initialisation, under both the
eager CPU plan and the CUDA plan (forced with ``planning_as``)."""

import pytest
import torch
import torch.nn as nn
from fdconv_testing import relative_error

from fdconv_zoo import FDConv, conv_weight_to_spectrum, convert_state_dict, spectrum_to_conv_weight
from fdconv_zoo.layers import planning_as


@pytest.fixture(params=["cpu", "cuda"], ids=["cpu_plan", "cuda_plan"])
def planned(request):
    with planning_as(request.param):
        yield request.param


CONVS = [  # (in, out, k, stride, padding, bias, input hw)
    (64, 64, 3, 1, 1, False, (20, 20)),
    (32, 64, 3, 2, 1, True, (17, 13)),
    (96, 48, 1, 1, 0, False, (9, 9)),
    (48, 96, 1, 2, 0, True, (10, 7)),
    (33, 40, 3, 1, 1, True, (8, 8)),  # odd Cin*k and kernel_num not dividing the bins: both beyond the official layer
    (128, 64, 3, 1, 2, False, (12, 12)),
]


@pytest.mark.parametrize("cin,cout,k,stride,padding,bias,hw", CONVS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_from_conv_equals_source(cin, cout, k, stride, padding, bias, hw, train, planned):
    torch.manual_seed(cin + cout + k)
    conv = nn.Conv2d(cin, cout, k, stride, padding, bias=bias).train(train)
    layer = FDConv.from_conv(conv, kernel_num=64)
    assert layer.use_fdconv and layer.training == train
    for batch in (3, 1):  # batch 1 in train mode: the official layer raises there
        x = torch.randn(batch, cin, *hw)
        with torch.no_grad():
            assert relative_error(layer(x), conv(x)) <= 1e-5


def test_from_conv_dilation_and_reflect_padding(planned):
    conv = nn.Conv2d(32, 32, 3, padding=2, dilation=2, padding_mode="reflect")
    layer = FDConv.from_conv(conv, kernel_num=16)
    x = torch.randn(2, 32, 11, 11)
    with torch.no_grad():
        assert relative_error(layer(x), conv(x)) <= 1e-5


@pytest.mark.parametrize("shape", [(2, 5, 7, 96), (3, 49, 96), (1, 96)])
def test_from_linear_equals_source(shape, planned):
    linear = nn.Linear(96, 40)
    layer = FDConv.from_conv(linear, kernel_num=64)
    assert layer.token_layout and layer.in_features == 96 and layer.out_features == 40
    x = torch.randn(*shape)
    for train in (True, False):
        layer.train(train)
        with torch.no_grad():
            assert relative_error(layer(x), linear(x)) <= 1e-5


def test_fallback_layers_are_the_source_conv():
    for conv in (nn.Conv2d(3, 64, 7, 2, 3), nn.Conv2d(16, 64, 3, padding=1), nn.Conv2d(64, 64, 5, padding=2)):
        layer = FDConv.from_conv(conv, kernel_num=64)
        assert not layer.use_fdconv
        assert set(layer.state_dict()) == set(conv.state_dict())
        x = torch.randn(2, conv.in_channels, 16, 16)
        torch.testing.assert_close(layer(x), conv(x), rtol=0, atol=0)


def test_from_conv_keeps_dtype_device_and_frozen_state():
    conv = nn.Conv2d(32, 48, 3, padding=1).double().requires_grad_(False)
    layer = FDConv.from_conv(conv, kernel_num=8)
    assert layer.dft_weight.dtype == torch.float64 and not layer.dft_weight.requires_grad
    x = torch.randn(2, 32, 8, 8, dtype=torch.float64)
    assert relative_error(layer(x), conv(x)) <= 1e-12


@pytest.mark.parametrize("cout,cin,k", [(64, 64, 3), (40, 96, 1), (24, 33, 3)])
def test_spectrum_round_trip(cout, cin, k):
    weight = torch.randn(cout, cin, k, k, dtype=torch.float64)
    spectrum = conv_weight_to_spectrum(weight)
    assert spectrum.shape == (1, cout * k, cin * k // 2 + 1, 2)
    torch.testing.assert_close(spectrum_to_conv_weight(spectrum, cin, k), weight, rtol=0, atol=1e-12)


def test_param_ratio_copies_sum_to_the_source():
    conv = nn.Conv2d(32, 32, 3, padding=1)
    layer = FDConv.from_conv(conv, kernel_num=8, param_ratio=3)
    assert layer.dft_weight.shape[0] == 3
    x = torch.randn(2, 32, 9, 9)
    with torch.no_grad():
        assert relative_error(layer(x), conv(x)) <= 1e-5


def test_matches_official_conversion_scaling():
    """dft_weight = (Re, Im) of rfft2 of the (Cout*k, Cin*k) weight image / (min(Cout, Cin) // 2) (spec §4.1)."""
    weight = torch.randn(24, 40, 3, 3)
    image = weight.permute(0, 2, 1, 3).reshape(72, 120)
    expected = torch.view_as_real(torch.fft.rfft2(image)) / 12
    torch.testing.assert_close(conv_weight_to_spectrum(weight)[0], expected, rtol=1e-5, atol=1e-5)


def test_convert_state_dict_whole_model():
    torch.manual_seed(0)
    source = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 48, 1)
    )
    target = nn.Sequential(
        *(
            FDConv.from_conv(m, kernel_num=16) if isinstance(m, nn.Conv2d) else m
            for m in nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(64, 48, 1),
            )
        )
    )
    converted = convert_state_dict(source.state_dict(), target)
    assert "0.weight" in converted and "2.dft_weight" in converted and "2.weight" not in converted
    assert "2.KSM_Global.kernel_fc.weight" in converted
    target.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert relative_error(target(x), source(x)) <= 1e-5
    # Already converted checkpoints pass through unchanged.
    again = convert_state_dict(converted, target)
    assert all(torch.equal(again[k], converted[k]) for k in converted)


def test_convert_state_dict_rejects_mismatched_shapes():
    target = nn.Sequential(FDConv(32, 64, 3, padding=1, kernel_num=16))
    with pytest.raises(ValueError, match=r"0\.weight.*\(64, 32, 3, 3\)"):
        convert_state_dict({"0.weight": torch.randn(64, 32, 1, 1)}, target)


def test_from_conv_random_shapes():
    """Seeded random layer shapes (channels, kernel, stride, padding, dilation, bias, kernel_num, input size)."""
    gen = torch.Generator().manual_seed(1234)

    def pick(*options):
        return options[torch.randint(len(options), (1,), generator=gen).item()]

    for _ in range(12):
        cin, cout = (int(torch.randint(17, 97, (1,), generator=gen)) for _ in range(2))
        k, stride, dilation = pick(1, 3), pick(1, 2), pick(1, 2)
        padding = pick(0, 1, 2) if k == 3 else 0
        conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=pick(True, False)).train(pick(True, False))
        layer = FDConv.from_conv(conv, kernel_num=pick(1, 4, 16, 64))
        x = torch.randn(pick(1, 2, 3), cin, *(int(torch.randint(5, 20, (1,), generator=gen)) for _ in range(2)))
        with torch.no_grad():
            assert relative_error(layer(x), conv(x)) <= 1e-5, conv
