"""Every execution plan computes the layer's one function, and an empty batch gives an empty output.

:func:`plan_execution` picks how a forward runs from the device, grad, export and compile state; here each
plan is passed explicitly, so every formulation runs on this machine whatever state would pick it.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F
from fdconv_testing import perturb_attention, relative_error
from torch.utils._python_dispatch import TorchDispatchMode

from fdconv_zoo import FDConv
from fdconv_zoo.layers import ConvMethod, ExecutionPlan, execution, plan_execution, planning_as
from fdconv_zoo.layers.band_split import _cached_band_matrices
from fdconv_zoo.layers.compiled_linear import padded_concat, reduced_linear
from fdconv_zoo.layers.tap_sum_conv import tap_sum_conv
from fdconv_zoo.layers.windowed_conv import windowed_conv

CASES = [
    dict(in_channels=32, out_channels=48, kernel_size=3, padding=1, bias=True),
    dict(in_channels=48, out_channels=32, kernel_size=3, stride=2, padding=1, padding_mode="reflect"),
    dict(in_channels=40, out_channels=24, kernel_size=1),
    dict(in_channels=40, out_channels=24, kernel_size=1, stride=2),
]


def _layer(case: dict, **kwargs) -> FDConv:
    torch.manual_seed(0)
    return perturb_attention(FDConv(**case, kernel_num=8, **kwargs)).double()


def _plans(in_place: bool, pointwise: bool = False) -> list[ExecutionPlan]:
    methods = (ConvMethod.GROUPED, ConvMethod.IM2COL) + ((ConvMethod.POINTWISE,) if pointwise else ())
    return [
        ExecutionPlan(
            method=method,
            samples_per_chunk=chunk,
            recompute=recompute and not in_place,
            in_place=in_place,
            fold_attention=fold,
            fft_reads_hermitian_part=native_edges,
            recompute_bands=recompute and not in_place,
            tap_sum_attention=native_edges,
            reuse_constants=native_edges,  # CPU-eager choices: one more axis would double the plans
        )
        for method, chunk, recompute, fold, native_edges in itertools.product(
            methods, (None, 2), (False, True), (False, True), (False, True)
        )
    ]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c['kernel_size']}s{c.get('stride', 1)}")
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_every_plan_gives_the_same_output_and_gradients(case, channels_last):
    layer = _layer(case).train()
    x = torch.randn(3, layer.in_channels, 9, 8, dtype=torch.float64)
    reference_plan = ExecutionPlan(method=ConvMethod.GROUPED)  # the convolution itself, not the planned formulation
    expected = layer(x, reference_plan)
    x_ref = x.clone().requires_grad_(True)
    layer(x_ref, reference_plan).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pointwise = case["kernel_size"] == 1
    for plan in _plans(in_place=False, pointwise=pointwise):
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = layer(xi, plan)
        assert relative_error(y, expected) < 1e-12, plan
        y.square().sum().backward()
        assert relative_error(xi.grad, x_ref.grad) < 1e-11, plan
        for name, p in layer.named_parameters():
            assert relative_error(p.grad, grads[name]) < 1e-10, (plan, name)
    layer.eval()
    with torch.no_grad():
        expected = layer(x)
        for plan in _plans(in_place=True, pointwise=pointwise):
            assert relative_error(layer(x, plan), expected) < 1e-12, plan


def test_pointwise_layers_run_a_batched_matmul_in_the_input_layout():
    layer = _layer(dict(in_channels=40, out_channels=24, kernel_size=1)).train()
    x = torch.randn(2, 40, 6, 5, dtype=torch.float64)
    assert plan_execution(layer, x).method is ConvMethod.POINTWISE
    assert (
        plan_execution(_layer(dict(in_channels=40, out_channels=24, kernel_size=1, padding=1)), x).method
        is not ConvMethod.POINTWISE
    )
    y = layer(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(y, layer(x, ExecutionPlan(method=ConvMethod.GROUPED))) < 1e-12


def test_token_layout_runs_the_matmul_plan():
    layer = _layer(dict(in_channels=40, out_channels=24, kernel_size=1), token_layout=True).eval()
    x = torch.randn(2, 5, 7, 40, dtype=torch.float64)
    plan = plan_execution(layer, x)
    assert plan.method is ConvMethod.MATMUL
    with torch.no_grad():
        chunked = layer(x, dataclasses.replace(plan, samples_per_chunk=1))
    assert relative_error(chunked, layer(x)) < 1e-12


def test_plan_follows_grad_mode_and_input():
    layer = FDConv(64, 64, 3, padding=1)
    x = torch.randn(2, 64, 8, 8)
    assert not plan_execution(layer, x).in_place  # parameters need gradients
    with torch.no_grad():
        assert plan_execution(layer, x).in_place
    layer.requires_grad_(False)
    assert plan_execution(layer, x).in_place and not plan_execution(layer, x.requires_grad_(True)).in_place
    plan = plan_execution(layer, x)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.method = ConvMethod.IM2COL  # type: ignore[misc]


@pytest.mark.parametrize(
    "spatial,groups,kernel,out_channels",
    [
        ((7, 6), 1, (3, 3), 3),
        ((7, 6), 4, (3, 3), 12),
        ((9,), 1, (5,), 3),
        ((5, 4, 6), 2, (3, 3, 3), 6),
        ((7, 6), 1, (3, 5), 3),
    ],
)
@pytest.mark.parametrize("same_conv", [tap_sum_conv, windowed_conv])
def test_same_convolutions_to_few_maps_equal_the_convolution(spatial, groups, kernel, out_channels, same_conv):
    """The CPU's tap sums and the compiled graphs' windowed products, against the library convolution."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, *spatial, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(out_channels, 8 // groups, *kernel, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(out_channels, dtype=torch.float64, generator=gen, requires_grad=True)
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(spatial) - 1]
    expected = conv(x, weight, bias, padding=tuple(k // 2 for k in kernel), groups=groups)
    y = same_conv(x, weight, bias, groups)
    assert relative_error(y, expected) < 1e-13
    for got, ref in zip(
        torch.autograd.grad(y.square().sum(), (x, weight, bias)),
        torch.autograd.grad(expected.square().sum(), (x, weight, bias)),
    ):
        assert relative_error(got, ref) < 1e-12
    with pytest.raises(ValueError, match="odd kernel"):
        same_conv(x, weight[..., :2], bias, groups)


def test_compiled_linear_forms_equal_the_library_ops():
    """The compiled graphs' heads: one reduction over weights and biases concatenated by zero padding."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = [torch.randn(n, 7, dtype=torch.float64, generator=gen, requires_grad=True) for n in (5, 1, 9)]
    biases = [torch.randn(n, dtype=torch.float64, generator=gen, requires_grad=True) for n in (5, 1, 9)]
    expected = F.linear(x, torch.cat(weights), torch.cat(biases))
    y = reduced_linear(x, padded_concat(weights), padded_concat(biases))
    assert relative_error(y, expected) < 1e-14
    assert relative_error(reduced_linear(x, torch.cat(weights), torch.cat(biases)), expected) < 1e-14
    leaves = (x, *weights, *biases)
    for got, ref in zip(
        torch.autograd.grad(y.square().sum(), leaves), torch.autograd.grad(expected.square().sum(), leaves)
    ):
        assert relative_error(got, ref) < 1e-13


def test_compiled_graphs_keep_the_separable_attentions_on_the_features(monkeypatch):
    """Eager plans fold the channel and filter attentions into the weight where it is the smaller tensor;
    compiled graphs never do: on the features they fuse into the kernels around the convolution."""
    layer = FDConv(8, 8, 3, padding=1)
    x = torch.randn(1, 8, 64, 64)  # 4,096 positions: the weight (8 x 8 x 9) is the smaller tensor
    assert plan_execution(layer, x).fold_attention
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not plan_execution(layer, x).fold_attention


class _OpRecorder(TorchDispatchMode):
    """Each op's name, input shapes and output shape."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, list[torch.Size], torch.Size | None]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        out = func(*args, **(kwargs or {}))
        shapes = [a.shape for a in args if isinstance(a, torch.Tensor)]
        self.ops.append((func.overloadpacket.__name__, shapes, out.shape if isinstance(out, torch.Tensor) else None))
        return out


def _compiled_forms(layer: FDConv, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, _OpRecorder]:
    """The layer's forward in the forms a compiled graph takes (here eagerly), and its ops."""
    with planning_as("cuda"):
        plan = dataclasses.replace(plan_execution(layer.train(train), x), fused_elementwise=True)
    with torch.set_grad_enabled(train), _OpRecorder() as recorded:
        y = layer(x, plan)
    return y, recorded


@pytest.mark.parametrize("train", [False, True])
def test_compiled_forms_take_the_descriptor_from_the_band_splits_fft(train):
    """Compiled graphs read the pooled descriptor from the zero-frequency bin of the input's real FFT, which FBM
    makes anyway: the input's one reduction is that FFT (no mean over the positions, a kernel reading it all)."""
    layer, x = _layer(CASES[0]), torch.randn(2, 32, 9, 8, dtype=torch.float64)
    y, recorded = _compiled_forms(layer, x, train)
    reductions = [name for name, ins, out in recorded.ops if x.shape in ins and out and out.numel() < x.numel()]
    assert reductions == ["_fft_r2c"]
    assert relative_error(y, layer(x)) < 1e-12


@pytest.mark.parametrize("lowfreq_att", [False, True])
def test_compiled_forms_split_only_the_attended_bands(lowfreq_att):
    """The bands sum to the input, so an unattended lowest band is the input minus the others: compiled graphs
    take the masks' product and the inverse FFT of the attended bands only (3 of 4 here)."""
    layer = _layer(CASES[0], fbm_cfg=dict(k_list=[2, 4, 8], lowfreq_att=lowfreq_att))
    x = torch.randn(2, 32, 9, 8, dtype=torch.float64)
    y, recorded = _compiled_forms(layer, x, train=True)
    split = [out for name, _, out in recorded.ops if name == "_fft_c2r" and out[-2:] == x.shape[-2:]]
    assert split == [torch.Size([2, 4 if lowfreq_att else 3, 32, 9, 8])]
    assert relative_error(y, layer(x)) < 1e-12


def test_band_attentions_by_tap_sums_in_eager_cpu_inference_only(monkeypatch):
    layer = FDConv(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 8, 8)
    assert not plan_execution(layer, x).tap_sum_attention  # a training forward
    with torch.no_grad():
        assert plan_execution(layer, x).tap_sum_attention
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert not plan_execution(layer, x).tap_sum_attention


def test_strided_pointwise_layers_run_a_batched_matmul():
    layer = _layer(dict(in_channels=40, out_channels=24, kernel_size=1, stride=2)).train()
    x = torch.randn(2, 40, 7, 6, dtype=torch.float64)
    assert plan_execution(layer, x).method is ConvMethod.POINTWISE
    y = layer(x.contiguous(memory_format=torch.channels_last))
    assert y.shape == (2, 24, 4, 3) and y.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(y, layer(x, ExecutionPlan(method=ConvMethod.GROUPED))) < 1e-12


def test_band_split_runs_on_convolutions_for_large_float32_maps_on_amd_avx512_cpus(monkeypatch):
    layer = FDConv(16, 16, 3, padding=1)
    large, small = torch.randn(1, 16, 64, 64), torch.randn(1, 16, 63, 64)
    monkeypatch.setattr(execution, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not plan_execution(layer, large).convolution_band_gemms  # the BLAS was the faster one there
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert plan_execution(layer, large).convolution_band_gemms
    for vendor in ("GenuineIntel", ""):  # MKL's GEMMs won on an Intel Xeon with AVX-512; unknown CPUs keep the BLAS
        monkeypatch.setattr(execution, "cpu_vendor", lambda vendor=vendor: vendor)
        assert not plan_execution(layer, large).convolution_band_gemms
    monkeypatch.setattr(execution, "cpu_vendor", lambda: "AuthenticAMD")
    assert not plan_execution(layer, small).convolution_band_gemms
    assert not plan_execution(layer.double(), large.double()).convolution_band_gemms  # no fast float64 convolution
    token_layer = FDConv(16, 16, 1, token_layout=True)
    assert not plan_execution(token_layer, torch.randn(1, 64, 64, 16)).convolution_band_gemms


@pytest.mark.parametrize("train", [False, True])
def test_convolution_band_gemms_plan_gives_the_same_output_and_gradients(train):
    layer = _layer(CASES[0]).train(train)
    x = torch.randn(2, layer.in_channels, 9, 8, dtype=torch.float64)
    plans = [
        ExecutionPlan(method=ConvMethod.GROUPED, in_place=not train, recompute_bands=train, convolution_band_gemms=c)
        for c in (False, True)
    ]
    with torch.set_grad_enabled(train):
        xs = [x.clone().requires_grad_(train) for _ in plans]
        ys = [layer(xi, plan) for xi, plan in zip(xs, plans)]
    assert relative_error(ys[1], ys[0]) < 1e-12
    if train:
        for y in ys:
            y.square().sum().backward()
        assert relative_error(xs[1].grad, xs[0].grad) < 1e-11


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(
    "kwargs,shape,expected",
    [
        (dict(in_channels=32, out_channels=48, kernel_size=3, padding=1, bias=True), (0, 32, 9, 7), (0, 48, 9, 7)),
        (dict(in_channels=32, out_channels=48, kernel_size=3, stride=2, padding=1), (0, 32, 9, 7), (0, 48, 5, 4)),
        (dict(in_channels=32, out_channels=48, kernel_size=1, token_layout=True), (0, 5, 6, 32), (0, 5, 6, 48)),
        (dict(in_channels=8, out_channels=12, kernel_size=3, padding=1), (0, 8, 6, 6), (0, 12, 6, 6)),  # plain fallback
    ],
)
def test_empty_batch_gives_an_empty_output(kwargs, shape, expected, train):
    layer = FDConv(**kwargs, kernel_num=4).train(train)
    stats = {n: b.clone() for n, b in layer.named_buffers()}
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    assert y.shape == expected and y.dtype == x.dtype
    for name, buffer in layer.named_buffers():  # an empty batch moves no running statistics
        assert torch.equal(buffer, stats[name]), name
    if train:
        y.sum().backward()
        assert x.grad.shape == x.shape
    assert layer(torch.randn(2, *shape[1:])).shape[1:] == expected[1:]


def test_empty_batch_through_an_exported_program():
    torch.manual_seed(0)
    layer = perturb_attention(FDConv(32, 48, 3, padding=1, kernel_num=4)).eval()
    x = torch.randn(2, 32, 8, 8)
    program = torch.export.export(layer, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=0, max=64)},))
    with torch.no_grad():
        assert relative_error(program.module()(x), layer(x)) < 1e-5
        assert program.module()(torch.randn(0, 32, 8, 8)).shape == (0, 48, 8, 8)


def test_band_matrices_are_cached_in_eager_forwards_only():
    torch.manual_seed(0)
    layer = perturb_attention(FDConv(32, 48, 3, padding=1, kernel_num=4)).eval()
    x = torch.randn(2, 32, 8, 8)
    _cached_band_matrices.cache_clear()
    program = torch.export.export(layer, (x,))
    with torch._subclasses.FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert not plan_execution(layer, fake).reuse_constants
    assert _cached_band_matrices.cache_info().currsize == 0  # the exported graph built its own constants
    with torch.no_grad():
        assert relative_error(program.module()(x), layer(x)) < 1e-5
    assert plan_execution(layer, x).reuse_constants and _cached_band_matrices.cache_info().currsize == 1


def test_band_matrices_cached_in_inference_mode_serve_a_later_training_step():
    torch.manual_seed(0)
    layer = perturb_attention(FDConv(32, 48, 3, padding=1, kernel_num=4))
    x = torch.randn(2, 32, 9, 7)
    _cached_band_matrices.cache_clear()
    with torch.inference_mode():
        expected = layer.eval()(x)
    assert _cached_band_matrices.cache_info().currsize == 1
    xi = x.clone().requires_grad_(True)
    y = layer(xi)  # eval mode, with autograd: the cached matrices are saved for backward
    y.square().sum().backward()  # inference tensors could not have been saved
    assert _cached_band_matrices.cache_info().hits >= 1
    assert relative_error(y, expected) < 1e-6 and xi.grad is not None
