"""A GPU time predicted from device-independent op counts (op_counts.py): overhead per op plus its roofline.

For every kernel ``i`` of a forward or a training step, with ``F_i`` FLOPs and ``B_i`` bytes (op_counts.py):

    eager:              T = N_ops * t_dispatch + sum_i roofline_i
    CUDA-graph replay:  T = N_kernels * t_graph + sum_i roofline_i
    roofline_i = max(F_i / (peak_flops * flop_efficiency), B_i / (peak_bandwidth * bandwidth_efficiency))

Assumptions (each one a choice; docs/cost-accounting.md discusses them):

- No overlap between the host launching op ``i + 1`` and the device running op ``i``: the time is a sum, which
  over-predicts where the device runs large kernels while the host queues the next ones, and is exact where
  ops are too small to hide their launch (the regime this model is for).
- ``t_dispatch`` (eager PyTorch's dispatch + launch per op, allocations included) is calibrated once, on the
  third-party A100 detector numbers (:func:`calibrate_dispatch`); ``t_graph`` (per kernel node replayed in a
  CUDA graph) is set, not calibrated: 1.5 us.
- Peaks are the vendors' published dense figures (:data:`GPUS`); large convolutions and GEMMs reach about 70%
  of them and streaming kernels about 80% of the bandwidth (``FLOP_EFFICIENCY``, ``BANDWIDTH_EFFICIENCY``).
- fp32: every FLOP at the fp32 (non-tensor-core) peak. bf16 autocast: matmul and convolution FLOPs at the
  bf16 tensor-core peak, and every tensor half its counted (float32) bytes, except the FFTs, which FDConv
  and cuFFT keep in float32 (their FLOPs at the fp32 peak, their bytes as counted). The T4 has no bf16
  tensor cores: its half-precision row uses its fp16 peak.
- Elementwise ops count no FLOPs: their time is their bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

__all__ = [
    "BANDWIDTH_EFFICIENCY",
    "FLOP_EFFICIENCY",
    "GPUS",
    "GRAPH_OVERHEAD_S",
    "Gpu",
    "OpCost",
    "calibrate_dispatch",
    "predict_seconds",
]

FLOP_EFFICIENCY = 0.7
BANDWIDTH_EFFICIENCY = 0.8
GRAPH_OVERHEAD_S = 1.5e-6
_FFT_OPS = frozenset({"aten._fft_r2c", "aten._fft_c2r", "aten._fft_c2c"})


@dataclasses.dataclass(frozen=True)
class Gpu:
    """Published dense peaks of one GPU (FLOP/s, bytes/s)."""

    name: str
    fp32_flops: float
    half_flops: float  # bf16 tensor cores (fp16 on the T4, which has no bf16)
    bandwidth: float


GPUS = {
    # NVIDIA A100 datasheet (SXM4 80 GB): FP32 19.5 TFLOPS, BF16 312 TFLOPS dense, HBM2e 2,039 GB/s.
    "A100": Gpu("A100-SXM4-80GB", 19.5e12, 312e12, 2.039e12),
    # NVIDIA H100 datasheet (SXM5): FP32 67 TFLOPS, BF16 989 TFLOPS dense (1,979 with sparsity), HBM3 3.35 TB/s.
    "H100": Gpu("H100-SXM5-80GB", 67e12, 989e12, 3.35e12),
    # NVIDIA T4 datasheet: FP32 8.1 TFLOPS, FP16 65 TFLOPS (tensor cores; no bf16), GDDR6 320 GB/s.
    "T4": Gpu("T4", 8.1e12, 65e12, 0.32e12),
}


@dataclasses.dataclass(frozen=True)
class OpCost:
    """What the model reads of one kernel (op_counts.OpRecord has these fields)."""

    name: str
    flops: int
    bytes: int


def _roofline_seconds(ops: Iterable[OpCost], gpu: Gpu, precision: str) -> float:
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: choose fp32 or bf16")
    flop_rate = {"fp32": gpu.fp32_flops, "bf16": gpu.half_flops}[precision] * FLOP_EFFICIENCY
    fft_rate = gpu.fp32_flops * FLOP_EFFICIENCY
    byte_rate = gpu.bandwidth * BANDWIDTH_EFFICIENCY
    total = 0.0
    for op in ops:
        fft = op.name in _FFT_OPS
        scale = 0.5 if precision == "bf16" and not fft else 1.0
        total += max(op.flops / (fft_rate if fft else flop_rate), op.bytes * scale / byte_rate)
    return total


def predict_seconds(
    ops: Iterable[OpCost], dispatched_ops: int, gpu: Gpu, precision: str, dispatch_s: float, graph: bool = False
) -> float:
    """Predicted seconds of the counted work: eager (``dispatched_ops`` x ``dispatch_s``) or replayed from a
    CUDA graph (one ``GRAPH_OVERHEAD_S`` per kernel), plus each kernel's roofline time."""
    ops = list(ops)
    overhead = len(ops) * GRAPH_OVERHEAD_S if graph else dispatched_ops * dispatch_s
    return overhead + _roofline_seconds(ops, gpu, precision)


def calibrate_dispatch(
    extra_ops_per_layer: float,
    extra_roofline_s_per_layer: float,
    layers: int,
    base_images_per_s: float,
    other_images_per_s: float,
) -> float:
    """The per-op dispatch time that makes a backbone with ``layers`` swapped layers, each adding
    ``extra_ops_per_layer`` ops and ``extra_roofline_s_per_layer`` seconds of roofline time, run at
    ``other_images_per_s`` where the unchanged model ran at ``base_images_per_s`` (one image per forward).

    Everything but the swapped layers is the same in both, so it cancels: the measured time difference per
    image is ``layers * (extra_ops_per_layer * t + extra_roofline_s_per_layer)``; solved for ``t``.
    """
    if extra_ops_per_layer <= 0 or layers <= 0 or other_images_per_s >= base_images_per_s:
        raise ValueError("calibration needs a slower variant that adds ops to a positive number of layers")
    per_layer_s = (1 / other_images_per_s - 1 / base_images_per_s) / layers
    dispatch = (per_layer_s - extra_roofline_s_per_layer) / extra_ops_per_layer
    if dispatch <= 0:
        raise ValueError(
            f"the roofline alone ({extra_roofline_s_per_layer * 1e3:.3f} ms per layer) exceeds the measured "
            f"difference ({per_layer_s * 1e3:.3f} ms per layer): no positive dispatch time explains it"
        )
    return dispatch
