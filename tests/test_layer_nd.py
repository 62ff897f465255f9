"""FDConv beyond square 2-D kernels: FDConv1d, non-square 2-D kernels and FDConv3d (this package's extension).

Every part is checked against a reference written out here from plain torch: the weight image by its index
formula, the band split with ``rfftn``/``irfftn`` and masks made as the official 2-D ones (a Chebyshev box on a
64-point grid per axis, nearest-resized by ``F.interpolate``), the local attention with the official 1-input-
channel Conv1d, and the per-sample convolution as a loop over ``nn.Conv{n}d`` calls; in float64, with active
attentions, in train and eval mode, gradients included.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fdconv_testing import ATTENTION_PARTS, perturb_attention, relative_error
from safetensors.torch import load_file, save_file
from torch.func import functional_call

from fdconv_zoo import (
    FDConv,
    FDConv1d,
    FDConv3d,
    conv_weight_to_spectrum,
    convert_state_dict,
    convert_to_fdconv,
    spectrum_to_conv_weight,
)
from fdconv_zoo.layers import ConvMethod, band_lowpass, frequency_group_map, plan_execution
from fdconv_zoo.layers.band_split import _band_lowpass_nd
from fdconv_zoo.layers.per_sample_conv import per_sample_conv

CLASSES = {1: FDConv1d, 2: FDConv, 3: FDConv3d}
CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}

# (conv arguments, input spatial size): every class, odd sizes, strides, dilations, padding modes, 'same'.
LAYERS = [
    (dict(in_channels=24, out_channels=32, kernel_size=3, padding=1), (23,)),
    (dict(in_channels=32, out_channels=24, kernel_size=5, stride=2, padding=2, bias=True), (30,)),
    (dict(in_channels=24, out_channels=24, kernel_size=3, padding=2, dilation=2, padding_mode="reflect"), (19,)),
    (dict(in_channels=40, out_channels=24, kernel_size=1), (9,)),
    (dict(in_channels=24, out_channels=32, kernel_size=(3, 1), padding=(1, 0)), (11, 7)),
    (
        dict(in_channels=32, out_channels=24, kernel_size=(1, 5), padding="same", padding_mode="circular", bias=True),
        (8, 9),
    ),
    (dict(in_channels=24, out_channels=40, kernel_size=(3, 5), stride=(2, 1), padding=1, dilation=(1, 2)), (10, 13)),
    (dict(in_channels=24, out_channels=32, kernel_size=3, padding=1, bias=True), (5, 6, 7)),
    (dict(in_channels=32, out_channels=24, kernel_size=(3, 1, 1), stride=(1, 2, 2), padding=(1, 0, 0)), (6, 7, 5)),
    (
        dict(
            in_channels=24,
            out_channels=24,
            kernel_size=(1, 3, 3),
            padding=(0, 2, 2),
            dilation=(1, 2, 2),
            padding_mode="replicate",
        ),
        (3, 9, 8),
    ),
    (dict(in_channels=40, out_channels=24, kernel_size=1, stride=2), (5, 6, 5)),
]
LAYER_IDS = [f"{len(size)}d-k{case['kernel_size']}-{i}" for i, (case, size) in enumerate(LAYERS)]


def _kernel(case: dict, dims: int) -> tuple[int, ...]:
    k = case["kernel_size"]
    return (k,) * dims if isinstance(k, int) else tuple(k)


def build(case: dict, dims: int, **kwargs) -> FDConv:
    """The layer for ``case``, its kernel listed so that non-square kernels become FDConv layers with an FBM."""
    kernel = _kernel(case, dims)
    return CLASSES[dims](
        **case,
        kernel_num=8,
        use_fdconv_if_k_in=[1, 3, kernel],
        use_fbm_if_k_in=[3, kernel] if max(kernel) > 1 else [3],
        **kwargs,
    )


# ------------------------------------------------------------------------------------------- references
def reference_masks(sizes: tuple[int, ...], cutoffs, exact: bool = False) -> torch.Tensor:
    """Masks made as the official 2-D ones, in n dimensions: the Chebyshev box ``max |f_axis| < 0.5/k + 1e-8``
    over the ``rfftn`` bins (float32), on a 64-point grid per axis then nearest-resized (or at the true size)."""
    grid = sizes if exact else (64,) * len(sizes)
    freqs = [torch.fft.fftfreq(n).abs() for n in grid[:-1]] + [torch.fft.rfftfreq(grid[-1]).abs()]
    cheb = torch.stack(torch.meshgrid(*freqs, indexing="ij")).amax(0)
    masks = torch.stack([cheb < 0.5 / k + 1e-8 for k in cutoffs]).float()
    if not exact:
        masks = F.interpolate(masks[:, None], size=(*sizes[:-1], sizes[-1] // 2 + 1), mode="nearest")[:, 0]
    return masks


def reference_lowpass(x: torch.Tensor, cutoffs, dims: int, exact: bool = False) -> list[torch.Tensor]:
    axes = tuple(range(-dims, 0))
    spectrum = torch.fft.rfftn(x, dim=axes)
    masks = reference_masks(tuple(x.shape[-dims:]), cutoffs, exact).to(x.dtype)
    return [torch.fft.irfftn(spectrum * m, s=x.shape[-dims:], dim=axes) for m in masks]


def reference_forward(layer: FDConv, x: torch.Tensor) -> torch.Tensor:
    """The layer's function written out: attentions, the weight image by ``irfft2`` of the group-weighted
    spectrum, kernel-shaped products, the band split by FFT and one ``nn.Conv{n}d`` call per sample."""
    dims, kernel = layer.spatial_dims, layer.kernel_size
    b, cin, cout = x.shape[0], layer.in_channels, layer.out_channels
    ones = (1,) * dims
    pooled = x.mean(tuple(range(2, x.dim())))
    channel, filt, spatial, group = layer.KSM_Global(pooled)
    p, kn = layer.param_ratio, layer.kernel_num
    spectrum = torch.view_as_complex(layer.dft_weight.contiguous())  # (P, rows, n2)
    per_bin = group.view(b, p, kn)[:, :, layer.frequency_group.long()]  # (B, P, rows, n2)
    rows, cols = cout * kernel[0], cin * math.prod(kernel[1:])
    image = torch.fft.irfft2((spectrum * per_bin).sum(1), s=(rows, cols)) * layer.alpha
    weight = image.view(b, cout, kernel[0], cin, *kernel[1:]).movedim(3, 2)  # (B, Cout, Cin, *kernel)
    local = layer.KSM_Local
    logits = local.conv(local.norm(pooled)[:, None, :]).view(b, cout, *kernel, cin).movedim(-1, 2)
    weight = weight * torch.sigmoid(logits) * layer.att_multi
    weight = weight * channel.view(b, 1, cin, *ones) * filt.view(b, cout, 1, *ones)
    if spatial is not None:
        weight = weight * spatial.view(b, 1, 1, *kernel)
    if hasattr(layer, "FBM"):
        fbm = layer.FBM
        lows = reference_lowpass(x, fbm.k_list, dims, fbm.exact_masks)
        att = [2 * torch.sigmoid(conv(x)) for conv in fbm.freq_weight_conv_list]  # sigmoid, spatial_group 1
        highs = [x - lows[0]] + [lows[j - 1] - lows[j] for j in range(1, len(lows))]
        x = sum(a * h for a, h in zip(att, highs)) + lows[-1]
    conv = CONVS[dims](
        cin,
        cout,
        kernel,
        layer.stride,
        layer.padding,
        layer.dilation,
        bias=False,
        padding_mode=layer.padding_mode,
        dtype=x.dtype,
    )
    y = torch.cat([functional_call(conv, {"weight": weight[i]}, (x[i : i + 1],)) for i in range(b)])
    return y if layer.bias is None else y + layer.bias.view(1, -1, *ones)


# ------------------------------------------------------------------------------------ Fourier weights
@pytest.mark.parametrize("kernel", [(3,), (5,), (1,), (3, 1), (1, 5), (3, 5), (3, 3, 3), (3, 1, 1), (2, 3, 4)])
def test_weight_image_layout(kernel):
    """Rows (o, u1), columns (i, u2..un): the spectrum is the ``rfft2`` of that image, and converts back."""
    cout, cin = 6, 5
    weight = torch.randn(cout, cin, *kernel, dtype=torch.float64)
    rows, cols = cout * kernel[0], cin * math.prod(kernel[1:])
    image = torch.empty(rows, cols, dtype=torch.float64)
    for o, i, *u in itertools.product(range(cout), range(cin), *(range(k) for k in kernel)):
        rest = 0
        for uj, kj in zip(u[1:], kernel[1:]):
            rest = rest * kj + uj
        image[o * kernel[0] + u[0], i * math.prod(kernel[1:]) + rest] = weight[(o, i, *u)]
    spectrum = conv_weight_to_spectrum(weight, param_ratio=2)
    assert spectrum.shape == (2, rows, cols // 2 + 1, 2)
    torch.testing.assert_close(
        torch.view_as_real(torch.fft.rfft2(image)) / (min(cout, cin) // 2) / 2, spectrum[0], rtol=0, atol=1e-12
    )
    torch.testing.assert_close(spectrum_to_conv_weight(spectrum, cin, kernel), weight, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dims,kernel", [(1, 3), (2, (3, 1)), (2, (1, 5)), (3, 3), (3, (3, 1, 1))])
def test_state_dict_layout(dims, kernel):
    """dft_weight (P, Cout*k1, Cin*k2*..*kn//2+1, 2), the group map of that image, one logit per kernel element."""
    kernel_t = (kernel,) * dims if isinstance(kernel, int) else kernel
    layer = CLASSES[dims](
        32, 40, kernel, kernel_num=8, param_ratio=2, use_fdconv_if_k_in=[kernel_t], use_fbm_if_k_in=[kernel_t]
    )
    rows, cols = 40 * kernel_t[0], 32 * math.prod(kernel_t[1:])
    state = layer.state_dict()
    assert state["dft_weight"].shape == (2, rows, cols // 2 + 1, 2)
    assert torch.equal(layer.frequency_group, frequency_group_map(rows, cols, 8))
    assert state["KSM_Local.conv.weight"].shape[0] == 40 * math.prod(kernel_t)
    spatial = state.get("KSM_Global.spatial_fc.weight")
    assert (spatial is None) == (math.prod(kernel_t) == 1) and (
        spatial is None or spatial.shape[0] == math.prod(kernel_t)
    )
    assert state["FBM.freq_weight_conv_list.0.weight"].dim() == dims + 2
    assert {k.split(".")[0] for k in state} == {"dft_weight", "bias", "KSM_Global", "KSM_Local", "FBM"}


# ------------------------------------------------------------------------------- frequency band split
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize(
    "size", [(1,), (2,), (7,), (16,), (33,), (64,), (100,), (3, 4, 5), (4, 7, 9), (8, 8, 8), (2, 13, 70)]
)
def test_band_split_matches_masked_fft(size, exact):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    cutoffs = [2, 4, 8]
    expected = reference_lowpass(x, cutoffs, len(size), exact)
    for low, ref in zip(band_lowpass(x, cutoffs, exact, spatial_dims=len(size)), expected):
        assert (low - ref).abs().max() < 1e-12


@pytest.mark.parametrize("size", [(5, 8), (14, 15), (33, 20), (64, 64)])
def test_band_split_in_n_dims_specialises_to_the_2d_one(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    for low_nd, low_2d in zip(_band_lowpass_nd(x, [2, 4, 8], False, 2), band_lowpass(x, [2, 4, 8])):
        assert (low_nd - low_2d).abs().max() < 1e-12


# ---------------------------------------------------------------------------------- the whole layer
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case,size", LAYERS, ids=LAYER_IDS)
def test_layer_equals_its_written_out_function(case, size, train):
    torch.manual_seed(0)
    layer = perturb_attention(build(case, len(size))).double().train(train)
    reference = perturb_attention(build(case, len(size))).double().train(train)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, case["in_channels"], *size, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = layer(x), reference_forward(reference, x_ref)
    assert relative_error(y, y_ref) < 1e-12
    with torch.no_grad():  # the in-place path
        assert relative_error(layer(x), y_ref) < 1e-12
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert relative_error(x.grad, x_ref.grad) < 1e-10
    for (name, p), p_ref in zip(layer.named_parameters(), reference.parameters()):
        # (a band that equals the next at a small size gives its attention an exactly zero gradient)
        assert (p.grad - p_ref.grad).abs().max() <= 1e-9 * p_ref.grad.abs().max(), name


@pytest.mark.parametrize("case,size", LAYERS, ids=LAYER_IDS)
def test_per_sample_convolution_formulations_agree(case, size):
    """Grouped convolution and im2col (strided slices in 1-D and 3-D) against a loop of plain convolutions."""
    dims = len(size)
    layer = build(case, dims).double()
    x = torch.randn(3, layer.in_channels, *size, dtype=torch.float64)
    kernel = torch.randn(3, layer.out_channels, layer.in_channels, *layer.kernel_size, dtype=torch.float64)
    conv = CONVS[dims](
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        bias=False,
        padding_mode=layer.padding_mode,
        dtype=torch.float64,
    )
    expected = torch.cat([functional_call(conv, {"weight": kernel[i]}, (x[i : i + 1],)) for i in range(3)])
    image = kernel.movedim(2, 3).reshape(
        3, layer.out_channels, layer.kernel_size[0], layer.in_channels, -1
    )  # (B, Cout, k1, Cin, rest)
    for method in (ConvMethod.GROUPED, ConvMethod.IM2COL):
        y = per_sample_conv(x, image, layer, method)
        assert y.shape == expected.shape and (y - expected).abs().max() < 1e-12, method


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case,size", LAYERS, ids=LAYER_IDS)
def test_from_conv_equals_source(case, size, train):
    dims = len(size)
    torch.manual_seed(1)
    conv = CONVS[dims](**case).train(train)
    kernel = _kernel(case, dims)
    layer = CLASSES[dims].from_conv(conv, kernel_num=64, use_fdconv_if_k_in=[1, 3, kernel], use_fbm_if_k_in=[3, kernel])
    assert layer.use_fdconv and layer.training == train and layer.kernel_size == conv.kernel_size
    for batch in (3, 1):  # batch 1 in train mode: single-sample statistics
        x = torch.randn(batch, conv.in_channels, *size)
        with torch.no_grad():
            assert relative_error(layer(x), conv(x)) <= 1e-5


@pytest.mark.parametrize("case,size", [LAYERS[0], LAYERS[4], LAYERS[7]], ids=["1d", "2d-3x1", "3d"])
@pytest.mark.parametrize("part", ATTENTION_PARTS)
def test_every_part_makes_the_layer_dynamic(case, size, part):
    """Perturbing one part's parameters changes the output and makes it depend on the input beyond an affine map."""
    torch.manual_seed(0)
    layer = build(case, len(size)).eval()
    x, x2 = torch.randn(2, 2, case["in_channels"], *size)
    with torch.no_grad():
        static = layer(x)
        perturbed = perturb_attention(layer)  # every part, then restore all but ``part``
        for name, module in perturbed.named_children():
            if name in ATTENTION_PARTS and name != part:
                module.reset_parameters()
        dynamic = perturbed(x)
        assert relative_error(dynamic, static) > 1e-2
        # A static convolution is affine in its input: f(x + x2) + f(0) = f(x) + f(x2); a dynamic one is not.
        assert relative_error(perturbed(x + x2) + perturbed(0 * x), dynamic + perturbed(x2)) > 1e-3


@pytest.mark.parametrize("dims", [1, 3])
def test_training_step_reaches_every_parameter(dims):
    case, size = (LAYERS[0], LAYERS[7])[dims == 3]
    layer = perturb_attention(build(case, dims)).train()
    layer(torch.randn(2, case["in_channels"], *size)).square().mean().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "dims,shape,match",
    [
        (
            1,
            (2, 32, 8, 8),
            r"FDConv1d expects an NCL input \(B, 32, L\), got shape \(2, 32, 8, 8\).*use FDConv for 4-D",
        ),
        (1, (2, 16, 8), r"FDConv1d expects an NCL input \(B, 32, L\), got shape \(2, 16, 8\)"),
        (2, (2, 32, 8), r"FDConv expects an NCHW input \(B, 32, H, W\).*token_layout=True.*use FDConv1d for 3-D"),
        (3, (2, 32, 8, 8), r"FDConv3d expects an NCDHW input \(B, 32, D, H, W\).*use FDConv for 4-D"),
        (3, (2, 16, 4, 4, 4), r"FDConv3d expects an NCDHW input \(B, 32, D, H, W\), got shape \(2, 16, 4, 4, 4\)"),
    ],
)
def test_wrong_input_rank_or_channels(dims, shape, match):
    layer = CLASSES[dims](32, 32, 3, padding=1, kernel_num=8)
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(*shape))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 32, *(4,) * dims, dtype=torch.int64))


def test_from_conv_takes_only_its_own_rank():
    with pytest.raises(
        TypeError, match=r"FDConv1d.from_conv converts nn.Conv1d modules, got Conv2d \(use FDConv for nn.Conv2d\)"
    ):
        FDConv1d.from_conv(nn.Conv2d(32, 32, 3))
    with pytest.raises(TypeError, match=r"FDConv3d.from_conv converts nn.Conv3d modules, got Linear"):
        FDConv3d.from_conv(nn.Linear(32, 32))
    with pytest.raises(
        TypeError, match=r"FDConv.from_conv converts nn.Conv2d or nn.Linear modules, got Conv3d \(use FDConv3d"
    ):
        FDConv.from_conv(nn.Conv3d(32, 32, 3))


def test_non_square_kernels_are_listed_explicitly():
    """The official rule reads the first side only, so (3, 1) would pass as a 3x3 layer: refused with the fix."""
    with pytest.raises(ValueError, match=r"kernel_size=\(3, 1\).*use_fdconv_if_k_in=\[\.\.\., \(3, 1\)\]"):
        FDConv(32, 32, (3, 1))
    assert not FDConv(32, 32, (5, 3)).use_fdconv  # first side unlisted: a plain convolution, as official
    layer = FDConv(32, 32, (3, 1), use_fdconv_if_k_in=[(3, 1)])
    assert layer.use_fdconv and not hasattr(layer, "FBM")  # use_fbm_if_k_in=(3,) means 3x3 only
    assert hasattr(FDConv(32, 32, (3, 1), use_fdconv_if_k_in=[[3, 1]], use_fbm_if_k_in=[[3, 1]]), "FBM")  # JSON lists
    assert (
        hasattr(FDConv1d(32, 32, 3), "FBM")
        and hasattr(FDConv3d(32, 32, 3), "FBM")
        and not hasattr(FDConv3d(32, 32, 1), "FBM")
    )
    assert not FDConv3d(32, 32, 5).use_fdconv


# ------------------------------------------------------------------------------ models and checkpoints
class _Net(nn.Module):
    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = CONVS[dims]
        self.stem = conv(4, 32, 3, padding=1)  # narrow: stays plain
        self.body = nn.Sequential(conv(32, 48, 3, padding=1), nn.ReLU(), conv(48, 32, 1), nn.ReLU())
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean(tuple(range(2, x.dim()))))


@pytest.mark.parametrize("dims", [1, 3])
def test_convert_to_fdconv_and_state_dict(dims, tmp_path):
    torch.manual_seed(0)
    source = _Net(dims).eval()
    model = _Net(dims).eval()
    model.load_state_dict(source.state_dict())
    names = convert_to_fdconv(model, ["body.*"], kernel_num=16)
    assert names == ["body.0", "body.2"] and all(type(model.body[i]) is CLASSES[dims] for i in (0, 2))
    x = torch.randn(2, 4, *(9, 8, 7)[:dims])
    with torch.no_grad():
        assert relative_error(model(x), source(x)) <= 1e-5
    fresh = _Net(dims).eval()
    convert_to_fdconv(fresh, ["body.*"], kernel_num=16)
    fresh.load_state_dict(convert_state_dict(source.state_dict(), fresh), strict=True)
    save_file(fresh.state_dict(), str(tmp_path / "m.safetensors"))
    perturb_attention(fresh)
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
    with torch.no_grad():
        assert relative_error(fresh(x), source(x)) <= 1e-5
    with pytest.raises(ValueError, match="matches no nn.Conv1d/nn.Conv2d/nn.Conv3d/nn.Linear"):
        convert_to_fdconv(fresh, ["nothing.*"])


@pytest.mark.parametrize("dims", [1, 3])
def test_export_plan_and_onnx(dims, tmp_path, monkeypatch):
    """While exporting: im2col over strided slices (no batch-sized group count), matrix inverse FFT; the ONNX
    file, with a dynamic batch, matches PyTorch in onnxruntime."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fdconv_zoo.export import verify_onnx

    torch.manual_seed(0)
    model = _Net(dims).eval()
    convert_to_fdconv(model, ["body.*"], kernel_num=16)
    perturb_attention(model).eval()
    size = (20,) if dims == 1 else (6, 5, 7)
    layer, x = model.body[0].double(), torch.randn(3, 32, *size, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x)
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        plan = plan_execution(layer, x)
        assert plan.exporting and plan.method is ConvMethod.IM2COL and plan.samples_per_chunk is None
        assert relative_error(layer(x, plan), expected) < 1e-12
        assert relative_error(layer(x, dataclasses.replace(plan, method=ConvMethod.GROUPED)), expected) < 1e-12
    monkeypatch.undo()
    model.float()
    example = torch.randn(2, 4, *size)
    path = tmp_path / f"net{dims}d.onnx"
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            verbose=False,
            optimize=False,
        )
    program.save(str(path))
    assert verify_onnx(path, model, batch_sizes=(1, 3)) < 1e-4
