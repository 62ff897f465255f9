"""The fast formulations of FDConv compute the same function as the official formulations.

The layer computes the FBM band split as partial-DFT matrix products, the local attention as a matrix
product over sliding windows, and the per-sample convolution as a loop, a grouped convolution or im2col +
batched matmul. Each is checked against the official formulation written out here (2-D FFTs with the
official masks, the 1-input-channel Conv1d, one grouped convolution), in float64, on odd sizes, batch 1,
strides, dilations and padding modes; the golden vectors check the whole layer against the official code.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fdconv_testing import perturb_attention, relative_error

from fdconv_zoo import FDConv
from fdconv_zoo.layers import ConvMethod, band_lowpass, band_masks, plan_execution
from fdconv_zoo.layers.per_sample_conv import per_sample_conv


def official_band_masks(h: int, w: int, cutoffs, exact: bool) -> torch.Tensor:
    """The official masks: Chebyshev low-pass on the 64x64 grid, nearest-resized (or at the true size)."""

    def chebyshev(rows: int, cols: int) -> torch.Tensor:
        return torch.maximum(torch.fft.fftfreq(rows).abs()[:, None], torch.fft.rfftfreq(cols).abs()[None, :])

    if exact:
        return torch.stack([chebyshev(h, w) < 0.5 / k + 1e-8 for k in cutoffs]).float()
    grid = torch.stack([chebyshev(64, 64) < 0.5 / k + 1e-8 for k in cutoffs]).float()
    return F.interpolate(grid[:, None], size=(h, w // 2 + 1), mode="nearest")[:, 0]


def official_band_lowpass(x: torch.Tensor, cutoffs, exact: bool) -> torch.Tensor:
    masks = official_band_masks(*x.shape[-2:], cutoffs, exact).to(x.dtype)
    spectrum = torch.fft.rfft2(x, norm="ortho")
    return torch.fft.irfft2(spectrum[:, None] * masks[None, :, None], s=x.shape[-2:], norm="ortho")


SIZES = [(1, 1), (2, 3), (5, 8), (7, 7), (14, 15), (20, 28), (33, 20), (56, 56), (64, 64), (97, 130)]


@pytest.mark.parametrize("exact", [False, True])
def test_band_masks_equal_the_official_construction_at_every_size(exact):
    cutoffs = [2, 3, 4, 8, 16]
    sizes = [(h, w) for h in range(1, 140, 3) for w in (*range(1, 40), h, 2 * h + 1, 255, 256)]
    mismatched = [
        (h, w)
        for h, w in sizes
        if not torch.equal(band_masks(h, w, cutoffs, exact), official_band_masks(h, w, cutoffs, exact))
    ]
    assert not mismatched, f"{len(mismatched)} sizes differ, e.g. {mismatched[:5]}"


@pytest.mark.parametrize("convolution_gemms", [False, True], ids=["matmul", "convolution"])
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_matmul_band_split_equals_the_fft_band_split(size, exact, convolution_gemms):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    expected = official_band_lowpass(x, [2, 4, 8], exact)
    for j, low in enumerate(band_lowpass(x, [2, 4, 8], exact, convolution_gemms=convolution_gemms)):
        assert (low - expected[:, j]).abs().max() < 1e-12


@pytest.mark.parametrize("convolution_gemms", [False, True], ids=["matmul", "convolution"])
def test_matmul_band_split_float32_is_as_accurate_as_the_fft(convolution_gemms):
    torch.manual_seed(0)
    x = torch.randn(4, 8, 56, 56, dtype=torch.float64)
    reference = official_band_lowpass(x, [2, 4, 8], False)
    lows = band_lowpass(x.float(), [2, 4, 8], convolution_gemms=convolution_gemms)
    err_matmul = max(relative_error(low, reference[:, j]) for j, low in enumerate(lows))
    err_fft = relative_error(official_band_lowpass(x.float(), [2, 4, 8], False), reference)
    assert err_matmul < 4 * max(err_fft, 1e-7)


def test_convolution_band_split_gradient_equals_the_fft_band_split_gradient():
    """float32 bands through 1x1 convolutions differentiate like the FFT split (float64), in channels-last too."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 70, 66, dtype=torch.float64)
    weights = torch.randn(2, 3, 6, 70, 66, dtype=torch.float64)
    x64 = x.clone().requires_grad_(True)
    (official_band_lowpass(x64, [2, 4, 8], False) * weights).sum().backward()
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x32 = x.float().contiguous(memory_format=memory_format).requires_grad_(True)
        lows = band_lowpass(x32, [2, 4, 8], convolution_gemms=True)
        sum((low * weights[:, j].float()).sum() for j, low in enumerate(lows)).backward()
        assert relative_error(x32.grad, x64.grad) < 1e-6


def test_local_attention_equals_the_official_conv1d():
    torch.manual_seed(0)
    layer = perturb_attention(FDConv(40, 24, 3, padding=1, kernel_num=4)).double()
    pooled = torch.randn(3, 40, dtype=torch.float64)
    local = layer.KSM_Local
    official = local.conv(local.norm(pooled)[:, None, :])  # (B, Cout*k*k, Cin), official layout
    expected = official.view(3, 24, 3, 3, 40).permute(0, 1, 2, 4, 3).reshape(3, 24 * 3, 40 * 3)  # weight-image layout
    assert (local(pooled) - expected).abs().max() < 1e-12


CONV_CASES = [
    dict(in_channels=24, out_channels=32, kernel_size=3, padding=1),
    dict(in_channels=32, out_channels=24, kernel_size=3, stride=2, padding=1),
    dict(in_channels=24, out_channels=24, kernel_size=3, padding=2, dilation=2),
    dict(in_channels=24, out_channels=40, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=24, out_channels=24, kernel_size=3, padding="same", bias=True),
    dict(in_channels=48, out_channels=32, kernel_size=1),
    dict(in_channels=32, out_channels=48, kernel_size=1, stride=2),
]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_per_sample_convolution_formulations_agree(case, batch):
    torch.manual_seed(0)
    layer = FDConv(**case, kernel_num=4).double()
    x = torch.randn(batch, layer.in_channels, 11, 9, dtype=torch.float64)
    weight = torch.randn(batch, layer.out_channels, layer.in_channels, *layer.kernel_size, dtype=torch.float64)
    expected = torch.cat([nn.Conv2d.forward(_plain_conv(layer, weight[i]), x[i : i + 1]) for i in range(batch)])
    image = weight.permute(0, 1, 3, 2, 4)  # the layout the formulations take: (B, Cout, k, Cin, k)
    for name in ("grouped", "im2col"):
        y = per_sample_conv(x, image, layer, ConvMethod(name))
        assert y.shape == expected.shape, name
        assert (y - expected).abs().max() < 1e-12, name


def _plain_conv(layer: FDConv, weight: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        bias=False,
        padding_mode=layer.padding_mode,
        dtype=weight.dtype,
    )
    conv.weight.data.copy_(weight)
    return conv


def official_forward(layer: FDConv, x: torch.Tensor) -> torch.Tensor:
    """The layer's function in its official formulation: FFT band split, Conv1d local logits,
    weight-image layout products, one grouped convolution; channel/filter attentions on the weight."""
    b, cin, cout, k = x.shape[0], layer.in_channels, layer.out_channels, layer.kernel_size[0]
    pooled = x.mean((2, 3))
    channel, filt, spatial, group = layer.KSM_Global(pooled)
    image = layer.spectral_weight(group)  # (B, Cout*k, Cin*k): golden-tested against the official layer
    local = layer.KSM_Local
    logits = local.conv(local.norm(pooled)[:, None, :]).view(b, cout, k, k, cin)
    weight = (torch.sigmoid(logits) * layer.att_multi).permute(0, 1, 4, 2, 3)  # (B, Cout, Cin, k, k)
    weight = weight * image.view(b, cout, k, cin, k).permute(0, 1, 3, 2, 4)
    weight = weight * channel.view(b, 1, cin, 1, 1) * filt.view(b, cout, 1, 1, 1)
    if spatial is not None:  # 1x1 layers have no spatial attention
        weight = weight * spatial.view(b, 1, 1, k, k)
    if hasattr(layer, "FBM"):
        fbm = layer.FBM
        lows = official_band_lowpass(x, fbm.k_list, fbm.exact_masks)  # (B, n, C, H, W)
        att = fbm._attention_maps(x)  # (B, n_att, 1, H, W): spatial_group 1
        highs = [x - lows[:, 0]] + [lows[:, j - 1] - lows[:, j] for j in range(1, len(fbm.k_list))]
        x = sum(att[:, j] * high for j, high in enumerate(highs)) + lows[:, -1]
    y = F.conv2d(
        x.reshape(1, b * cin, *x.shape[-2:]),
        weight.reshape(b * cout, cin, k, k),
        None,
        layer.stride,
        layer.padding,
        layer.dilation,
        b,
    )
    y = y.view(b, cout, *y.shape[-2:])
    return y if layer.bias is None else y + layer.bias.view(1, -1, 1, 1)


@pytest.mark.parametrize(
    "kwargs,size,batch",
    [
        (dict(in_channels=32, out_channels=48, kernel_size=3, padding=1), (13, 11), 3),
        (dict(in_channels=48, out_channels=32, kernel_size=3, padding=1, bias=True), (7, 7), 1),
        (dict(in_channels=64, out_channels=64, kernel_size=3, stride=2, padding=1), (15, 16), 2),
        (dict(in_channels=40, out_channels=72, kernel_size=1), (9, 5), 2),
        # deep layers: weights built a sample at a time, im2col convolution (the CPU fast paths of ResNet's last stages)
        (dict(in_channels=128, out_channels=128, kernel_size=3, padding=1), (5, 6), 2),
        (dict(in_channels=512, out_channels=256, kernel_size=1, stride=2), (5, 5), 3),
        # im2col with the channel and filter attentions folded into the kernel (weights smaller than the features)
        (dict(in_channels=24, out_channels=24, kernel_size=3, stride=3, padding=1), (12, 12), 2),
        (dict(in_channels=64, out_channels=64, kernel_size=1), (6, 7), 2),
    ],
)
@pytest.mark.parametrize("train", [False, True])
def test_layer_equals_its_official_formulation(kwargs, size, batch, train):
    torch.manual_seed(0)
    layer = perturb_attention(FDConv(**kwargs, kernel_num=8)).double().train(train)
    x = torch.randn(batch, layer.in_channels, *size, dtype=torch.float64, requires_grad=True)
    reference = perturb_attention(FDConv(**kwargs, kernel_num=8)).double().train(train)  # same seed: same weights
    reference.load_state_dict(layer.state_dict())
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = layer(x), official_forward(reference, x_ref)
    assert relative_error(y, y_ref) < 1e-12
    with torch.no_grad():  # the in-place path, reusing buffers across the samples of deep layers
        assert relative_error(layer(x), y_ref) < 1e-12
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert relative_error(x.grad, x_ref.grad) < 1e-10
    for (name, p), p_ref in zip(layer.named_parameters(), reference.parameters()):
        assert relative_error(p.grad, p_ref.grad) < 1e-9, name


def _train_step(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    layer(x).square().sum().backward()
    return x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_recomputing_the_weight_in_backward_gives_the_same_gradients(kernel_size):
    torch.manual_seed(0)
    layer = perturb_attention(FDConv(32, 48, kernel_size, padding=kernel_size // 2, kernel_num=8)).double().train()
    x = torch.randn(3, 32, 9, 9, dtype=torch.float64)
    layer.recompute_weight = True
    grad_x, grads = _train_step(layer, x)
    layer.recompute_weight = False
    grad_x_kept, grads_kept = _train_step(layer, x)
    assert torch.equal(grad_x, grad_x_kept)
    for name in grads:
        assert torch.allclose(grads[name], grads_kept[name], rtol=1e-12, atol=1e-14), name


@pytest.mark.parametrize("chunk", [1, 2])  # batch 3: even and uneven chunks
@pytest.mark.parametrize("recompute", [False, True])
def test_weights_built_in_chunks_give_the_same_gradients(recompute, chunk):
    torch.manual_seed(0)
    layer = perturb_attention(FDConv(32, 48, 3, padding=1, kernel_num=8, recompute_weight=recompute)).double().train()
    x = torch.randn(3, 32, 6, 5, dtype=torch.float64)
    grad_x, grads = _train_step(layer, x)
    expected = layer(x)
    chunked = _ChunkedLayer(layer, chunk)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch resizing a reused buffer for the smaller last chunk
        assert torch.allclose(chunked(x), expected, rtol=1e-12, atol=1e-14)  # in place, buffers reused across chunks
    grad_x_chunked, grads_chunked = _train_step(chunked, x)
    assert torch.allclose(grad_x_chunked, grad_x, rtol=1e-12, atol=1e-14)
    for name in grads:
        # atol 1e-14 of the gradient's scale: a few entries that cancel to ~1e-5 of it differ in the last bits
        # between one batched inverse FFT and three single ones.
        scale = grads[name].abs().max()
        assert torch.allclose(grads_chunked["layer." + name], grads[name], rtol=1e-12, atol=1e-14 * scale), name


class _ChunkedLayer(nn.Module):
    """``layer`` with its weights built ``chunk`` samples at a time, the rest of the plan as it would be."""

    def __init__(self, layer: FDConv, chunk: int) -> None:
        super().__init__()
        self.layer, self.chunk = layer, chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = dataclasses.replace(plan_execution(self.layer, x), samples_per_chunk=self.chunk)
        return self.layer(x, plan)


def _saved_for_backward(layer: FDConv, x: torch.Tensor) -> int:
    """Elements of memory autograd keeps for backward during one forward: the distinct storages of the saved
    tensors, parameters (and views of them) excluded."""
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x.requires_grad_(True)).sum()
    return sum(saved.values())


def test_deep_layers_keep_no_per_sample_weight_for_backward_and_scale_linearly():
    """By default: a 256-channel 3x3 weight per sample is 47x its 7x7 input."""
    torch.manual_seed(0)
    layer = perturb_attention(FDConv(256, 256, 3, padding=1, kernel_num=16)).train()
    weight_numel = 256 * 256 * 9
    saved = {b: _saved_for_backward(layer, torch.randn(b, 256, 7, 7)) for b in (2, 4, 6)}
    assert saved[6] < 6 * weight_numel / 4  # activation-sized tensors only: the 6 per-sample weights are not kept
    assert saved[6] - saved[4] == saved[4] - saved[2] > 0  # linear in the batch size
    layer.recompute_weight = False
    assert _saved_for_backward(layer, torch.randn(2, 256, 7, 7)) > 2 * 2 * weight_numel  # what recomputation saves


@pytest.mark.parametrize("train", [False, True])
def test_channels_last_layer_and_input_compute_the_same_function(train):
    torch.manual_seed(0)
    layer = perturb_attention(FDConv(32, 48, 3, padding=1, kernel_num=8)).train(train)
    x = torch.randn(2, 32, 10, 10)
    expected = layer(x)
    layer.to(memory_format=torch.channels_last)  # also makes the 4-D dft_weight channels-last
    actual = layer(x.to(memory_format=torch.channels_last))
    assert relative_error(actual, expected) < 1e-5
    actual.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_compiled_training_step_matches_eager():  # about 30 s of inductor compilation on 2 cores
    torch.manual_seed(0)
    layer = perturb_attention(FDConv(32, 48, 3, padding=1, kernel_num=8), scale=0.1).train()
    x = torch.randn(2, 32, 8, 8)
    grad_x, grads = _train_step(layer, x)
    compiled_grad_x, compiled_grads = _train_step(torch.compile(layer), x)
    assert relative_error(compiled_grad_x, grad_x) < 1e-5
    for name, grad in grads.items():
        assert relative_error(compiled_grads["_orig_mod." + name], grad) < 1e-4, name  # OptimizedModule's names


def test_default_recomputes_only_where_weights_outsize_the_input():
    shallow, deep = FDConv(64, 64, 3, padding=1), FDConv(512, 512, 3, padding=1)
    assert _saved_for_backward(shallow.train(), torch.randn(2, 64, 56, 56)) > 2 * 64 * 64 * 9  # weights kept
    assert _saved_for_backward(deep.train(), torch.randn(2, 512, 7, 7)) < 512 * 512 * 9  # recomputed


def test_per_sample_convolution_method_by_layer_and_context(monkeypatch):
    """im2col where the weight outsizes the output map (Cout >= H'W'), the grouped convolution elsewhere."""
    layer = FDConv(256, 256, 3, padding=1, stride=2)

    def method(size: int) -> str:
        return plan_execution(layer, torch.randn(1, 256, size, size)).method.value

    assert method(32) == "im2col"  # 16x16 = 256 outputs
    assert method(34) == "grouped"  # 17x17
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert method(7) == "grouped"
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert method(64) == "im2col"


def test_weights_of_deep_cpu_layers_are_built_a_few_samples_at_a_time(monkeypatch):
    """Inference: chunks of <= 2 MB of weights from 0.5 MB per sample; training: chunks of <= 4 MB once the
    batch's weights pass 8 MB; at least one sample per chunk."""
    small, c128, c256, c512 = (
        FDConv(c, c, 3, padding=1) for c in (64, 128, 256, 512)
    )  # 0.15, 0.6, 2.4, 9.4 MB per sample

    def chunk(layer: FDConv, batch: int) -> int | None:
        return plan_execution(layer, torch.randn(batch, layer.in_channels, 1, 1)).samples_per_chunk

    with torch.no_grad():
        assert [chunk(m, 32) for m in (small, c128, c256, c512)] == [None, 3, 1, 1]
    assert [chunk(m, 8) for m in (small, c128, c256, c512)] == [None, None, 1, 1]
    assert [chunk(m, 32) for m in (small, c128)] == [None, 7]
    assert chunk(c256, 3) is None  # 7.1 MB in all
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.no_grad():
        assert chunk(c512, 32) is None
