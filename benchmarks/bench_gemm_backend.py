"""FBM's band split with its GEMMs on the BLAS (``torch.matmul``) or on oneDNN (as 1x1 convolutions), CPU.

    python benchmarks/bench_gemm_backend.py --markdown
    python benchmarks/bench_gemm_backend.py --shapes 2x64x128x128 --repeats 20

On the CPU, ``torch.matmul`` runs on the BLAS the wheel links (MKL on x86), while convolutions run on oneDNN's
own kernels. The same product can be written either way (:mod:`fdconv_zoo.layers.convolution_matmul`), and the
band split (:func:`fdconv_zoo.layers.band_lowpass`, all GEMMs) takes either: ``convolution_gemms``, which the
execution planner turns on for large maps on AVX-512 CPUs. This script times both forms at the FBM input
shapes of ResNet-50 at 512x512, batch 2: forward, and forward plus backward, round-robin medians in one process, and the largest
difference between the two forms' bands (the same sums in another order). ``--backbone`` adds what the choice
does to a whole FDConv backbone's eval forward and training step (as in ``bench_dense.py``), against its base
model: every band split on the BLAS, and every one as convolutions (whatever the planner would choose here).

    python benchmarks/bench_gemm_backend.py --backbone resnet50:512x512:2 --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_description, median_times  # noqa: E402
from bench_dense import Setting, activate_attentions, training_or_eval_step  # noqa: E402

import fdconv_zoo.layers.fdconv as fdconv_module  # noqa: E402
from fdconv_zoo.layers import band_lowpass  # noqa: E402

__all__ = ["RESNET50_512_FBM_INPUTS", "band_gemms_as", "main"]

# (shape, number of FBM layers that see it) in resnet50_fdconv at 512x512, batch 2
RESNET50_512_FBM_INPUTS = [
    ((2, 64, 128, 128), 3),
    ((2, 128, 128, 128), 1),
    ((2, 128, 64, 64), 3),
    ((2, 256, 64, 64), 1),
    ((2, 256, 32, 32), 5),
    ((2, 512, 32, 32), 1),
    ((2, 512, 16, 16), 2),
]
CUTOFFS = (2, 4, 8)  # FBM's default k_list

_planned = fdconv_module.plan_execution


@contextlib.contextmanager
def band_gemms_as(convolution: bool) -> Iterator[None]:
    """Inside the block every FDConv layer's band split runs its GEMMs as convolutions, or all on ``torch.matmul``
    (a benchmark-only switch over the planner's choice)."""

    def plan(layer, x: torch.Tensor):
        return dataclasses.replace(_planned(layer, x), convolution_band_gemms=convolution)

    fdconv_module.plan_execution = plan
    try:
        yield
    finally:
        fdconv_module.plan_execution = _planned


def _with_band_gemms(fn: Callable[[], None], convolution: bool) -> Callable[[], None]:
    def run() -> None:
        with band_gemms_as(convolution):
            fn()

    return run


def _split(x: torch.Tensor, on_convolution: bool, backward: bool):
    def run() -> None:
        with torch.set_grad_enabled(backward):
            lows = band_lowpass(x, CUTOFFS, convolution_gemms=on_convolution)
            if backward:
                torch.autograd.backward(lows, [torch.ones_like(low) for low in lows])

    return run


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape is BxCxHxW with positive sizes, like 2x64x128x128; got {text!r}")
    return shape


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--shapes", type=_parse_shape, nargs="+", help="BxCxHxW inputs (default: resnet50 at 512x512, batch 2)"
    )
    p.add_argument("--repeats", type=int, default=9, help="timed runs per variant (median)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument(
        "--backbone", type=Setting.parse, help="also time a whole backbone both ways, e.g. resnet50:512x512:2"
    )
    p.add_argument("--markdown", action="store_true", help="GitHub Markdown table")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = [(s, 1) for s in args.shapes] if args.shapes else RESNET50_512_FBM_INPUTS
    rows, results, totals = [], {}, [0.0] * 4
    for shape, layers in shapes:
        torch.manual_seed(0)
        x = torch.randn(shape)
        with torch.no_grad():
            pairs = zip(band_lowpass(x, CUTOFFS), band_lowpass(x, CUTOFFS, convolution_gemms=True))
            difference = max((a - b).abs().max().item() for a, b in pairs)
        grad_x = x.clone().requires_grad_()
        fns = {}
        for on_convolution in (False, True):
            fns[("forward", on_convolution)] = _split(x, on_convolution, backward=False)
            fns[("train", on_convolution)] = _split(grad_x, on_convolution, backward=True)
        times = median_times(fns, torch.device("cpu"), repeats=args.repeats)
        cells = [times[("forward", False)], times[("forward", True)], times[("train", False)], times[("train", True)]]
        totals = [t + layers * c for t, c in zip(totals, cells)]
        label = "x".join(map(str, shape))
        results[label] = {"layers": layers, "ms": cells, "max_difference": difference}
        rows.append(_row(label, layers, cells, f"{difference:.1e}"))
    rows.append(_row("all layers", sum(n for _, n in shapes), totals, "-"))
    header = [
        "input",
        "layers",
        "forward ms, matmul / conv",
        "conv / matmul",
        "fwd+bwd ms, matmul / conv",
        "conv / matmul",
        "max abs difference",
    ]
    print(
        f"**Band split GEMM backend.** {machine_description(torch.device('cpu'), args.threads)}; cut-offs {CUTOFFS}; medians of {args.repeats}.\n"
    )
    print(format_table(header, rows, args.markdown))
    if args.backbone is None:
        return {"shapes": results, "total_ms": totals}
    backbone = _backbone_times(args.backbone, args.repeats)
    print(
        f"\n**{args.backbone}**, the FDConv layers' band splits all on the BLAS (matmul) or all as 1x1 convolutions (conv).\n"
    )
    header = [
        "mode",
        "base ms",
        "FDConv ms, matmul / conv",
        "conv / matmul",
        "FDConv / base, matmul",
        "FDConv / base, conv",
    ]
    rows = [
        [
            mode,
            f"{t['base']:.0f}",
            f"{t['matmul']:.0f} / {t['conv']:.0f}",
            f"{t['conv'] / t['matmul']:.2f}x",
            f"{t['matmul'] / t['base']:.2f}x",
            f"{t['conv'] / t['base']:.2f}x",
        ]
        for mode, t in backbone.items()
    ]
    print(format_table(header, rows, args.markdown))
    return {"shapes": results, "total_ms": totals, "backbone": backbone}


def _backbone_times(setting: Setting, repeats: int) -> dict[str, dict[str, float]]:
    """Median ms of the base model and the FDConv model (band splits on the BLAS, and as convolutions), eval and
    training step, round-robin in this process."""
    base, fdconv = setting.create(setting.model), setting.create(f"{setting.model}_fdconv")
    activate_attentions(fdconv)
    x = torch.randn(setting.batch, 3, setting.height, setting.width)
    times = {}
    for mode, train in (("eval", False), ("train", True)):
        base.train(train)
        fdconv.train(train)
        step = training_or_eval_step(fdconv, x, train, None)
        fns = {
            "base": training_or_eval_step(base, x, train, None),
            "matmul": _with_band_gemms(step, False),
            "conv": _with_band_gemms(step, True),
        }
        times[mode] = median_times(fns, torch.device("cpu"), repeats=repeats)
    return times


def _row(label: str, layers: int, cells: list[float], difference: str) -> list[object]:
    fwd_mm, fwd_conv, train_mm, train_conv = cells
    return [
        label,
        layers,
        f"{fwd_mm:.1f} / {fwd_conv:.1f}",
        f"{fwd_conv / fwd_mm:.2f}x",
        f"{train_mm:.1f} / {train_conv:.1f}",
        f"{train_conv / train_mm:.2f}x",
        difference,
    ]


if __name__ == "__main__":
    main()
