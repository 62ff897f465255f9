"""fdconv_zoo.count_flops against torch's FlopCounterMode on plain models, and against a count derived by hand
for one FDConv layer."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import fdconv_zoo
from fdconv_zoo import FDConv, count_flops
from fdconv_zoo.profiling import FLOP_PARTS


def _flop_counter_total(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(x)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("name", "kwargs", "input_size"),
    [
        ("resnet18", {}, (3, 32, 32)),
        ("convnext_atto", {}, (3, 64, 64)),
        ("swin_tiny_patch4_window7_224", {}, (3, 224, 224)),
    ],
)
def test_plain_timm_models_equal_flop_counter_mode(name, kwargs, input_size):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(2, *input_size)
    with torch.no_grad():
        before = model(x)
    expected = _flop_counter_total(model, x)
    model.train()
    count = count_flops(model, input_size, batch_size=2)
    assert count.total == expected  # exactly: same counter, shapes only
    assert count.breakdown == {**dict.fromkeys(FLOP_PARTS, 0), "rest": expected}
    assert model.training  # mode restored
    with torch.no_grad():  # counting on fake tensors left nothing behind (cached masks, buffers)
        assert torch.equal(model.eval()(x), before)


def _by_hand_1x1(batch: int, cin: int, cout: int, height: int, width: int, kernel_num: int) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of a 1x1 FDConv without FBM, from its definition."""
    attention = max(int(cin * 0.0625), 16)  # the global branch's width
    taps = round(math.log2(cin) / 2 + 0.5) // 2 * 2 + 1  # the local branch's ECA kernel
    ksm_global = 2 * batch * attention * (cin + cin + cout + kernel_num)  # fc, then the channel, filter, group heads
    ksm_local = 2 * batch * cout * taps * cin  # one logit per weight element from `taps` neighbouring channels
    points = cout * cin  # the (Cout*k, Cin*k) weight image, one inverse real FFT per sample
    fdw = round(2.5 * batch * points * math.log2(points))
    convolution = 2 * batch * cout * cin * height * width
    return dict(fdw=fdw, ksm=ksm_global + ksm_local, fbm=0, convolution=convolution, rest=0)


def test_one_fdconv_layer_matches_the_count_by_hand():
    layer = FDConv.from_conv(nn.Conv2d(32, 48, 1, bias=False), kernel_num=4)
    assert layer.use_fdconv and not hasattr(layer, "FBM")
    expected = _by_hand_1x1(batch=2, cin=32, cout=48, height=10, width=12, kernel_num=4)
    count = count_flops(layer, (32, 10, 12), batch_size=2)
    assert count.breakdown == expected
    assert count.total == sum(expected.values())


def test_plain_layers_around_an_fdconv_are_the_rest():
    stem = nn.Conv2d(3, 32, 3, padding=1, bias=False)
    model = nn.Sequential(stem, FDConv.from_conv(nn.Conv2d(32, 48, 1, bias=False), kernel_num=4))
    count = count_flops(model, (3, 10, 12), batch_size=2)
    assert count.breakdown == {**_by_hand_1x1(2, 32, 48, 10, 12, 4), "rest": 2 * 2 * 32 * 3 * 9 * 10 * 12}


def test_fdconv_resnet_convolutions_cost_what_the_source_does():
    """The per-sample convolutions of every FDConv (3x3 with FBM, 1x1, strided) plus the plain layers around
    them are exactly the source model's FLOPs; FDW, KSM and FBM are the additions."""
    fdconv = timm.create_model("resnet18_fdconv", layers=(1, 1, 1, 1))
    source = timm.create_model("resnet18", layers=(1, 1, 1, 1))
    count = count_flops(fdconv, (3, 64, 64))
    base = _flop_counter_total(source, torch.zeros(1, 3, 64, 64))
    assert count.breakdown["convolution"] + count.breakdown["rest"] == base
    assert all(count.breakdown[part] > 0 for part in ("fdw", "ksm", "fbm"))
    assert sum(count.breakdown.values()) == count.total
    assert count.gmacs == count.total / 2e9


class _Spectra(nn.Module):
    """A real FFT, its inverse and a complex FFT of the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft2(x)
        return torch.fft.irfft2(spectrum, s=x.shape[-2:]) + torch.fft.fft2(x.to(torch.complex64)).real


def test_fft_convention():
    c, h, w = 3, 16, 8
    count = count_flops(_Spectra(), (c, h, w), batch_size=2)
    n = h * w
    real = 2.5 * 2 * c * n * math.log2(n)  # per real transform of N points
    assert count.total == round(real) * 2 + round(2 * real)  # rfft2, irfft2, and fft2 at twice a real one


class _ReadsAValue(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 2 if y.sum().item() >= 0 else y  # needs a value: no fake-tensor run


def test_models_that_need_values_are_counted_on_real_tensors():
    model = _ReadsAValue()
    assert count_flops(model, (3, 9, 9)).total == _flop_counter_total(model, torch.zeros(1, 3, 9, 9))


def test_bad_input_size_is_refused():
    with pytest.raises(ValueError, match=r"\(channels, height, width\)"):
        count_flops(nn.Conv2d(3, 8, 1), (32, 32))
    with pytest.raises(ValueError, match="batch_size"):
        fdconv_zoo.count_flops(nn.Conv2d(3, 8, 1), (3, 32, 32), batch_size=0)
