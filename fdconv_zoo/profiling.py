"""Cost accounting as papers report it: parameters, FLOPs (split by FDConv part) and eval latency.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the ops the model actually runs: its
convolution, matmul and linear formulas (one multiply-add = 2 FLOPs) plus formulas registered here for the
FFTs it does not count. Elementwise ops (activations, normalisation, the attention products) are not counted,
as FlopCounterMode does not count them for any model; a model without FDConv layers and FFTs gets exactly
FlopCounterMode's total.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.utils.flop_counter import FlopCounterMode

from .layers import FDConv
from .surgery import count_parameters

__all__ = [
    "FFT_FLOP_FORMULAS",
    "FLOP_PARTS",
    "FlopCount",
    "ModelProfile",
    "count_flops",
    "format_profile",
    "measure_latency",
    "profile_models",
]

_logger = logging.getLogger(__name__)

# What FDConv's FLOPs are spent on; "rest" is everything outside FDConv layers.
FLOP_PARTS = ("fdw", "ksm", "fbm", "convolution", "rest")
_PART_LABELS = {
    "fdw": "FDW weight generation (inverse FFTs)",
    "ksm": "KSM attentions (global + local)",
    "fbm": "FBM band split and attention",
    "convolution": "the convolution itself",
    "rest": "the rest of the model",
}
# FDConv submodules and the part their whole subtree belongs to.
_SUBMODULE_PARTS = {"KSM_Global": "ksm", "KSM_Local": "ksm", "FBM": "fbm"}
# Errors of shape-only (fake tensor) execution, e.g. a model that reads a value with .item().
_FAKE_TENSOR_ERRORS = (DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException)


def _fft_flops(points: int, transforms: float, per_point_log: float) -> int:
    return round(per_point_log * transforms * points * math.log2(points)) if points > 1 else 0


def _real_fft_flops(real_shape: Sequence[int], dim: Sequence[int]) -> int:
    points = math.prod(real_shape[d] for d in dim)
    return _fft_flops(points, math.prod(real_shape) / max(points, 1), 2.5)


def _fft_r2c_flops(self_shape, dim, normalization, onesided, *, out_shape=None, **kwargs) -> int:
    """Forward real FFT: 2.5 N log2 N per transform of N real points."""
    return _real_fft_flops(self_shape, dim)


def _fft_c2r_flops(self_shape, dim, normalization, last_dim_size, *, out_shape=None, **kwargs) -> int:
    """Inverse real FFT: 2.5 N log2 N per transform to N real points."""
    return _real_fft_flops(out_shape, dim)


def _fft_c2c_flops(self_shape, dim, normalization, forward, *, out_shape=None, **kwargs) -> int:
    """Complex FFT: 5 N log2 N per transform of N complex points."""
    points = math.prod(self_shape[d] for d in dim)
    return _fft_flops(points, math.prod(self_shape) / max(points, 1), 5.0)


# The radix-2 estimates: 2.5 N log2 N real FLOPs for a real FFT of N points, 5 N log2 N for a complex one
# (a multi-dimensional transform of N points in all counts as one of N points).
FFT_FLOP_FORMULAS: dict[Any, Any] = {
    torch.ops.aten._fft_r2c: _fft_r2c_flops,
    torch.ops.aten._fft_c2r: _fft_c2r_flops,
    torch.ops.aten._fft_c2c: _fft_c2c_flops,
}
_FFT_OPS = frozenset(FFT_FLOP_FORMULAS)


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward: ``total`` and its ``breakdown`` over :data:`FLOP_PARTS` (which sums to it)."""

    total: int
    breakdown: dict[str, int]

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    @property
    def gmacs(self) -> float:
        """Giga multiply-accumulates: half the FLOPs (what mmcv's ``get_flops`` reports as "FLOPs")."""
        return self.total / 2e9


def count_flops(model: nn.Module, input_size: Sequence[int], batch_size: int = 1) -> FlopCount:
    """FLOPs of ``model`` in eval mode on a ``(batch_size, *input_size)`` input, split by FDConv part.

    Inside every FDConv: its ``KSM_Global``/``KSM_Local`` subtrees are "ksm", its ``FBM`` subtree "fbm", the
    FFTs of its own forward (the per-sample weights from the spectrum) "fdw", and the other products of its own
    forward (the per-sample convolution, grouped conv or im2col/token matmul) "convolution". FFTs count as
    2.5 N log2 N FLOPs per real transform of N points (5 N log2 N complex); elementwise products, such as the
    attentions applied to the weight, are not counted. The forward runs on fake tensors (shapes only, so a
    1280x800 input costs no arithmetic), or on real zeros where the model needs values.
    """
    if len(input_size) != 3 or not all(isinstance(s, int) and s > 0 for s in input_size):
        raise ValueError(f"input_size must be (channels, height, width) of positive ints, got {tuple(input_size)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    counter = FlopCounterMode(display=False, custom_mapping=FFT_FLOP_FORMULAS)
    training = model.training
    model.eval()
    try:
        try:
            with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True), counter:
                model(torch.zeros(batch_size, *input_size, dtype=dtype, device=device))
        except _FAKE_TENSOR_ERRORS as error:
            _logger.info(
                "%s needs tensor values (%s); counting on a real input instead",
                type(model).__name__,
                type(error).__name__,
            )
            with torch.no_grad(), counter:
                model(torch.zeros(batch_size, *input_size, dtype=dtype, device=device))
    finally:
        model.train(training)
    return _attribute(model, counter.get_flop_counts())


def _attribute(model: nn.Module, counts: Mapping[str, Mapping[Any, int]]) -> FlopCount:
    """Split FlopCounterMode's per-module counts (keyed ``<RootClass>.<qualified name>``, parents included)."""
    total = sum(counts.get("Global", {}).values())
    parts = dict.fromkeys(FLOP_PARTS, 0)
    root = type(model).__name__
    for name, module in model.named_modules():
        if not isinstance(module, FDConv):
            continue
        fqn = f"{root}.{name}" if name else root
        own = dict(counts.get(fqn, {}))
        for child, part in _SUBMODULE_PARTS.items():
            for op, flops in counts.get(f"{fqn}.{child}", {}).items():
                parts[part] += flops
                own[op] -= flops
        for op, flops in own.items():
            parts["fdw" if op in _FFT_OPS else "convolution"] += flops
    parts["rest"] = total - sum(parts.values())
    return FlopCount(total, parts)


# ---------------------------------------------------------------------------------------------- profile
@dataclass(frozen=True)
class ModelProfile:
    """One row of the profile table."""

    name: str
    parameters: int
    flops: FlopCount
    latency_ms: float | None = None


@torch.no_grad()
def measure_latency(models: Sequence[nn.Module], x: torch.Tensor, *, repeats: int = 10, warmup: int = 2) -> list[float]:
    """Median eval forward time (ms) of each model on ``x``, the models taking turns every repeat so that a
    busy machine slows them alike."""
    for model in models:
        model.eval()
    times: list[list[float]] = [[] for _ in models]
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    for step in range(warmup + repeats):
        for model, samples in zip(models, times):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            if step >= warmup:
                samples.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(samples) for samples in times]


def profile_models(
    models: Mapping[str, nn.Module],
    input_size: Sequence[int],
    batch_size: int = 1,
    *,
    timed: bool = False,
    repeats: int = 10,
) -> list[ModelProfile]:
    """Parameters, FLOPs and (``timed``) eval latency of each named model at the same input."""
    latencies: list[float | None] = [None] * len(models)
    if timed:
        param = next(next(iter(models.values())).parameters())  # the models share a device and dtype
        x = torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(0)).to(
            param.device, param.dtype
        )
        latencies = measure_latency(list(models.values()), x, repeats=repeats)
    return [
        ModelProfile(name, count_parameters(model), count_flops(model, input_size, batch_size), latency)
        for (name, model), latency in zip(models.items(), latencies)
    ]


def format_profile(
    base: ModelProfile, fdconv: ModelProfile, input_size: Sequence[int], batch_size: int = 1, repeats: int | None = None
) -> str:
    """The paper-style table: the base model, its FDConv variant and the difference; then what each column
    is, and where the FDConv model's FLOPs go."""
    timed = base.latency_ms is not None and fdconv.latency_ms is not None
    width = max(len(base.name), len(fdconv.name), len("difference")) + 2
    header = f"{'model':{width}}{'params (M)':>12}{'GFLOPs':>10}{'GMACs':>10}" + (f"{'eval ms':>10}" if timed else "")

    def row(name: str, params: float, gflops: float, gmacs: float, ms: float | None, sign: str = "") -> str:
        line = f"{name:{width}}{params:>{sign}12.2f}{gflops:>{sign}10.3f}{gmacs:>{sign}10.3f}"
        return line + (f"{ms:>{sign}10.1f}" if timed else "")

    lines = [
        f"input {'x'.join(str(s) for s in input_size)}, batch {batch_size}, eval mode",
        header,
        "-" * len(header),
        *(row(p.name, p.parameters / 1e6, p.flops.gflops, p.flops.gmacs, p.latency_ms) for p in (base, fdconv)),
        row(
            "difference",
            (fdconv.parameters - base.parameters) / 1e6,
            fdconv.flops.gflops - base.flops.gflops,
            fdconv.flops.gmacs - base.flops.gmacs,
            fdconv.latency_ms - base.latency_ms if timed else None,
            sign="+",
        ),
        "",
        "params (M): parameters in millions (buffers excluded)",
        "GFLOPs: 10^9 floating-point operations of one forward of the batch (multiply-add = 2; convolutions, matrix "
        "products and FFTs at 2.5 N log2 N per real transform; elementwise ops not counted)",
        "GMACs: GFLOPs / 2, the unit mmcv's get_flops prints as 'FLOPs'",
    ]
    if timed:
        ratio = fdconv.latency_ms / base.latency_ms
        lines.append(
            f"eval ms: median wall time of one forward over {repeats or 'the'} repeats, both models taking turns, this machine ({ratio:.2f}x)"
        )
    lines += ["", f"{fdconv.name} GFLOPs by part:"]
    lines += [f"  {fdconv.flops.breakdown[part] / 1e9:>9.3f}  {_PART_LABELS[part]}" for part in FLOP_PARTS]
    return "\n".join(lines)
