"""How one FDConv forward runs: an immutable plan, decided once from the layer and its input.

The layer computes one function, but in several equivalent ways: the per-sample convolution as one grouped
convolution, as im2col + batched matmul, or (token layout) as a batched matmul; the weights of a large batch a
few samples at a time; the per-sample weights kept for backward or recomputed there; in-place products where
no autograd is recorded; the separable channel and filter attentions on the weight or on the features; the
band split's products on the BLAS or as convolutions; the band attentions by a convolution or by tap sums.
:func:`plan_execution` is the only code that looks at the device, grad mode, export or compile state to pick
among them; everything downstream takes the plan. Tests and users can pass their own plan to ``FDConv.forward``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch

from .conv_geometry import ConvGeometry, output_size

__all__ = [
    "ConvMethod",
    "ExecutionPlan",
    "Workspace",
    "cpu_vendor",
    "float32_region",
    "into",
    "is_exporting",
    "plan_execution",
    "planning_as",
]

Workspace = dict[str, torch.Tensor]

# Weight budgets of the CPU chunking (bytes of float32 per-sample weights): inference chunks hold at most
# _EVAL_CHUNK once a sample's weight reaches _EVAL_CHUNK_FROM; training chunks hold at most _TRAIN_CHUNK once
# the whole batch's weights pass _TRAIN_CHUNK_FROM (autograd needs fresh buffers, so smaller chunks gain less).
_EVAL_CHUNK_FROM, _EVAL_CHUNK = 2**19, 2**21
_TRAIN_CHUNK_FROM, _TRAIN_CHUNK = 2**23, 2**22
# Positions per 2-D map from which an AMD CPU with AVX-512 runs the band split's GEMMs as 1x1 convolutions
# (oneDNN) instead of on the BLAS (MKL in the x86 wheels): at 512x512 on an AMD EPYC with AVX-512 they took
# 0.64-0.85x the BLAS's time on maps of 64x64 and up, about the same at 32x32, and lost on small maps; on an
# AVX2-only EPYC they took 1.06-1.08x everywhere in forward, and on an Intel Xeon with AVX-512 1.24-1.80x
# (benchmarks/bench_gemm_backend.py; tables in benchmarks/README.md). MKL's single-precision GEMM is the one that differs.
_CONVOLUTION_BANDS_FROM = 64 * 64


class ConvMethod(enum.Enum):
    """Formulation of the per-sample convolution (all compute the same sums)."""

    GROUPED = "grouped"  # one convolution with B groups: accelerators, compile, shallow CPU layers
    IM2COL = "im2col"  # unfolded input times the weight image: deep CPU layers, export (no batch-dependent groups)
    MATMUL = "matmul"  # token layout: (B, N, Cin) times the per-sample (Cin, Cout)
    POINTWISE = (
        "pointwise"  # unpadded 1x1 maps: a batched matmul over the (strided) positions, in the input's memory layout
    )


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """Everything one forward decides besides the function itself.

    ``samples_per_chunk`` None builds the whole batch's weights at once. ``in_place`` holds where this forward
    records no autograd for the layer (products may then overwrite their inputs, and chunks reuse buffers).
    ``fold_attention`` applies the channel and filter attentions to the weight instead of the features.
    ``exporting`` selects the exportable forms (matrix inverse FFT, no autocast regions);
    ``float32_attention`` (autocast is on) runs the attention branch in float32 and leaves the weight's dtype to autocast.
    ``fft_reads_hermitian_part``: the device's inverse real FFT itself reads only the Hermitian part of the
    spectrum's edge columns (the CPU's), so they are not symmetrised first. ``recompute_bands`` redoes the
    frequency band split in backward instead of keeping the bands; ``convolution_band_gemms`` runs its products
    as 1x1 convolutions. ``tap_sum_attention`` computes the band attention maps as one 1x1 convolution and
    shifted sums (:mod:`.tap_sum_conv`), which in inference beats the CPU's direct convolution to three channels.
    ``reuse_constants``: eager code on plain tensors takes the band split's DFT matrices from a per-size cache;
    traced code (compile, export, fake tensors) builds them, so they become constants of its graph.
    ``batched``: the whole forward in a fixed handful of ops for the whole batch (:mod:`.batched_forward`), where
    every op costs a kernel launch (accelerators) or a kernel of the compiled graph; the CPU-eager and export
    fields above are then unused. ``fused_elementwise`` (compiled graphs): a compiler fuses elementwise work into
    one kernel, so gathers and small reductions replace the ops it cannot fuse (an FFT, a 1-D convolution).
    """

    method: ConvMethod
    samples_per_chunk: int | None = None
    recompute: bool = False
    in_place: bool = False
    fold_attention: bool = False
    exporting: bool = False
    float32_attention: bool = False
    fft_reads_hermitian_part: bool = False
    recompute_bands: bool = False
    convolution_band_gemms: bool = False
    tap_sum_attention: bool = False
    reuse_constants: bool = False
    batched: bool = False
    fused_elementwise: bool = False

    @property
    def reuses_buffers(self) -> bool:
        return self.in_place and self.samples_per_chunk is not None


class PlannedLayer(ConvGeometry, Protocol):
    """What planning reads of an FDConv layer."""

    in_channels: int
    out_channels: int
    token_layout: bool
    spatial_dims: int
    recompute_weight: bool | None

    def parameters(self) -> Any: ...


def is_exporting() -> bool:
    """True while ``torch.onnx.export`` (either exporter) or ``torch.export`` traces the model."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def float32_region(device_type: str, exporting: bool) -> contextlib.AbstractContextManager:
    """Autocast off (FFTs and band splits run in float32); a no-op while exporting, where an autocast region
    only adds a wrapper op to the graph (exported graphs run in the dtype they were traced in)."""
    return contextlib.nullcontext() if exporting else torch.autocast(device_type, enabled=False)


def into(
    workspace: Workspace | None, name: str, fn: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
) -> torch.Tensor:
    """``fn(*args, **kwargs)``, written into ``workspace[name]`` (``out=``) when an earlier call left a buffer there.

    Per-sample loops without autograd reuse their weight-sized buffers this way: glibc hands freed blocks of a
    few MB back to the OS, and faulting fresh pages in again can cost as much as the arithmetic.
    """
    if workspace is None:
        return fn(*args, **kwargs)
    buffer = workspace.get(name)
    workspace[name] = out = fn(*args, **kwargs) if buffer is None else fn(*args, **kwargs, out=buffer)
    return out


_planned_device_type: str | None = None


@contextlib.contextmanager
def planning_as(device_type: str):
    """Plan every FDConv forward inside the block as on ``device_type`` while the tensors stay where they are.

    Forcing the CUDA plan on a CPU machine lets its ops be counted (kernels, bytes, host syncs are properties of
    the plan, not of the device) and lets the CPU test suite check that plan's function against the golden vectors.
    """
    global _planned_device_type
    previous, _planned_device_type = _planned_device_type, torch.device(device_type).type
    try:
        yield
    finally:
        _planned_device_type = previous


def _device_type(x: torch.Tensor) -> str:
    return _planned_device_type or x.device.type


def _weight_numel(layer: PlannedLayer) -> int:
    return layer.out_channels * layer.in_channels * math.prod(layer.kernel_size)


def _positions(layer: PlannedLayer, x: torch.Tensor) -> int:
    """Input positions per sample (before the stride): every middle axis in token layout."""
    return math.prod(x.shape[1:-1]) if layer.token_layout else math.prod(x.shape[2:])


def _is_pointwise(layer: PlannedLayer) -> bool:
    """A 1x1 kernel without padding (any stride): every output position is the kernel times one input position."""
    unpadded = isinstance(layer.padding, str) or not any(layer.padding)
    return all(k == 1 for k in layer.kernel_size) and unpadded


def _method(layer: PlannedLayer, x: torch.Tensor, exporting: bool, compiling: bool) -> ConvMethod:
    """A batched matmul for token layout and pointwise layers (the 1x1 convolutions of bottlenecks and their
    strided shortcuts); otherwise im2col while exporting and on the CPU wherever the weight outsizes the output
    map (``Cout >= H'W'``): the matmul reads the weight in the layout it is generated in, while the convolution
    needs it transposed."""
    if layer.token_layout:
        return ConvMethod.MATMUL
    if _is_pointwise(layer):
        return ConvMethod.POINTWISE
    if exporting:
        return ConvMethod.IM2COL
    if _device_type(x) != "cpu" or compiling:
        return ConvMethod.GROUPED
    positions = math.prod(output_size(x.shape[2:], layer))
    return ConvMethod.IM2COL if layer.out_channels >= positions else ConvMethod.GROUPED


@functools.cache
def cpu_vendor() -> str:
    """The x86 CPU's vendor as Linux reports it (``"GenuineIntel"``, ``"AuthenticAMD"``); ``""`` where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _convolution_band_gemms(layer: PlannedLayer, x: torch.Tensor, positions: int, eager_cpu: bool) -> bool:
    """Eager float32 band splits of large 2-D maps on AMD CPUs with AVX-512, the one kind where oneDNN's
    convolutions beat the BLAS's GEMMs (float64 convolutions have no fast CPU kernel; exported and compiled graphs
    keep plain matmuls). The CPU is asked last: a traced call of ``get_cpu_capability`` is a graph break."""
    large_map = not layer.token_layout and layer.spatial_dims == 2 and positions >= _CONVOLUTION_BANDS_FROM
    if not (eager_cpu and large_map and x.dtype != torch.float64):
        return False
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and cpu_vendor() == "AuthenticAMD"


def _samples_per_chunk(layer: PlannedLayer, batch: int, training: bool) -> int | None:
    """A few samples' weights at a time for deep CPU layers, so their buffers stay in cache and are reused;
    never smaller than one sample, and no more chunks than needed (each costs a few dozen small ops)."""
    per_sample = _weight_numel(layer) * 4
    if training:
        chunk = None if batch * per_sample <= _TRAIN_CHUNK_FROM else max(1, _TRAIN_CHUNK // per_sample)
    else:
        chunk = None if per_sample < _EVAL_CHUNK_FROM else max(1, _EVAL_CHUNK // per_sample)
    return None if chunk is None or chunk >= batch else chunk


def plan_execution(layer: PlannedLayer, x: torch.Tensor) -> ExecutionPlan:
    """The plan for ``layer(x)`` in the current device, grad, export and compile state."""
    exporting = is_exporting()
    compiling = torch.compiler.is_compiling()
    grad = torch.is_grad_enabled()
    records_autograd = grad and (x.requires_grad or any(p.requires_grad for p in layer.parameters()))
    positions = _positions(layer, x)
    recompute = layer.recompute_weight
    if recompute is None:  # per sample: the weight (Cout * Cin * k...) against the input (Cin * positions)
        recompute = layer.out_channels * math.prod(layer.kernel_size) > positions
    eager = not exporting and not compiling
    eager_cpu = eager and _device_type(x) == "cpu"
    whole_batch = not eager_cpu  # a symbolic batch must not be looped over
    batched = whole_batch and not exporting
    if batched:  # kernels, not bytes, bound these: the weights are kept for backward unless asked otherwise
        recompute = layer.recompute_weight
    return ExecutionPlan(
        method=_method(layer, x, exporting, compiling),
        samples_per_chunk=None if whole_batch else _samples_per_chunk(layer, x.shape[0], grad),
        recompute=bool(recompute) and grad and not exporting,
        in_place=not records_autograd,
        # Separable attentions go where they touch fewer elements: the weight, or the (pre-stride) features.
        # Compiled graphs keep them on the features, where they fuse into the kernels that make the convolution's
        # input and read its output; on the weight they make its kernel read more than the compiler inlines.
        fold_attention=not compiling and _weight_numel(layer) < (layer.in_channels + layer.out_channels) * positions,
        exporting=exporting,
        float32_attention=torch.is_autocast_enabled(x.device.type),
        # Eager only: inductor's buffers need not have the interleaved layout the complex-pairs product views.
        fft_reads_hermitian_part=eager_cpu,
        recompute_bands=records_autograd and not exporting,
        convolution_band_gemms=_convolution_band_gemms(layer, x, positions, eager_cpu),
        # Without autograd only: in training steps the shifted sums' backward cost what the forward saved.
        tap_sum_attention=eager_cpu and not records_autograd,
        # A tensor subclass (fake, functional) means some tracer runs: its tensors must not enter the cache.
        reuse_constants=eager and type(x) is torch.Tensor,
        batched=batched,
        fused_elementwise=compiling,
    )
