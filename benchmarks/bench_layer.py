"""FDConv layer speed and training memory against nn.Conv2d, the official layer and timm's CondConv2d.

    python benchmarks/bench_layer.py                                   # CPU, 2 threads, batch 8 (~3 min)
    python benchmarks/bench_layer.py --official ~/FDConv/FDConv_detection/mmdet_custom/FDConv.py --markdown
    python benchmarks/bench_layer.py --device cuda --dtype bfloat16 --compile --plot layer.png
    python benchmarks/bench_layer.py --quick                           # smoke run, a few seconds

Shapes: ResNet-50's four 3x3 convolutions (C=64 at 56x56, 128 at 28x28, 256 at 14x14, 512 at 7x7) with the
paper's kernel_num=64. All layers are built and timed in the same process, round-robin (so background load hits
every column alike), as medians of repeated runs after warm-up. The official layer (``--official PATH``, your own
copy of its ``FDConv.py``) gets the same state dict as FDConv, and the script checks that both compute the same
output. Rows with channels_last inputs and weights are on by default; ``--compile`` adds torch.compile rows (both
for nn.Conv2d, FDConv and CondConv2d only). A variant that fails for a layer shows "fails" (the reason is logged).
Peak memory is that of one training step: tensors allocated above what was allocated before it (CUDA:
``max_memory_allocated``; CPU: the profiler's allocation events).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Target,
    check_plot_path,
    format_table,
    load_official_fdconv,
    logger,
    machine_description,
    median_times,
    peak_memory_mib,
    quiet,
    save_figure,
)

from fdconv_zoo import FDConv  # noqa: E402

__all__ = ["SHAPES", "RoutedCondConv", "main"]

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]
BASE = "nn.Conv2d"
# The project's layer targets, at SHAPES with batch 8 in float32 (eager, contiguous inputs).
TARGET_BATCH = 8


class RoutedCondConv(nn.Module):
    """timm's CondConv2d with the routing its blocks use: pooled features -> linear -> sigmoid."""

    def __init__(self, channels: int, num_experts: int) -> None:
        super().__init__()
        from timm.layers import CondConv2d

        self.routing = nn.Linear(channels, num_experts)
        self.conv = CondConv2d(channels, channels, 3, padding=1, bias=False, num_experts=num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, torch.sigmoid(self.routing(x.mean((2, 3)))))


def _step(module: nn.Module, x: torch.Tensor, train: bool, dtype: torch.dtype | None) -> Callable[[], None]:
    """One inference call, or one training step (forward, a scalar loss, backward)."""

    def run() -> None:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            if train:
                module.zero_grad(set_to_none=True)
                module(x).float().square().mean().backward()
            else:
                with torch.no_grad():
                    module(x)

    return run


def _parse_shape(text: str) -> tuple[int, int]:
    try:
        c, hw = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: write CHANNELSxSIZE, e.g. 64x56") from None
    if c <= 0 or hw <= 0:
        raise argparse.ArgumentTypeError(f"shape {text!r}: channels and size must be positive")
    return c, hw


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads); default 2")
    p.add_argument("--batch", type=int, default=TARGET_BATCH)
    p.add_argument(
        "--shapes",
        nargs="+",
        type=_parse_shape,
        default=SHAPES,
        metavar="CxHW",
        help="default: 64x56 128x28 256x14 512x7",
    )
    p.add_argument("--kernel-num", type=int, default=64, help="FDConv kernel_num (the paper's 64)")
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed runs per layer and row (at least 1: it checks the variant works)"
    )
    p.add_argument("--repeats", type=int, default=10, help="timed runs per layer (at most)")
    p.add_argument(
        "--budget",
        type=float,
        default=2.0,
        help="seconds of timed runs after which a slow layer stops early (>= 3 runs)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="autocast dtype (FFTs stay float32)",
    )
    p.add_argument(
        "--official", type=Path, metavar="PATH", help="your copy of the official FDConv.py, added as a column"
    )
    p.add_argument("--no-condconv", action="store_true", help="skip timm's CondConv2d column")
    p.add_argument("--no-channels-last", action="store_true", help="skip the channels_last rows")
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (slow to compile on the CPU)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak training memory table")
    p.add_argument(
        "--markdown", action="store_true", help="GitHub Markdown tables with a header line naming the machine"
    )
    p.add_argument("--plot", type=Path, metavar="PNG", help="write a bar chart of the time ratios")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: first shape only, batch 2, 1 warm-up, 2 repeats, no channels_last rows",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def _build(
    name: str, c: int, conv: nn.Conv2d, kernel_num: int, official_cls: type | None, reference: FDConv
) -> nn.Module:
    if name == BASE:
        return conv
    if name == "FDConv":
        return reference
    if name == "official":
        with quiet():  # it prints a line per layer
            layer = official_cls(c, c, kernel_size=3, padding=1, bias=False, kernel_num=kernel_num)
        layer.load_state_dict(reference.state_dict(), strict=True)
        return layer
    if name == "CondConv2d":
        return RoutedCondConv(c, num_experts=4)
    raise AssertionError(name)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the tables; returns the measured numbers (for tests and scripting)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.batch, args.warmup, args.repeats, args.no_channels_last = args.shapes[:1], 2, 1, 2, True
    if min(args.batch, args.threads, args.kernel_num) < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--batch, --threads, --kernel-num and --repeats must be >= 1, --warmup >= 0")
    try:
        check_plot_path(args.plot, args.overwrite)
        official_cls = load_official_fdconv(args.official) if args.official else None
    except (OSError, RuntimeError, ValueError, ImportError) as exc:
        parser.error(str(exc))
    logging.basicConfig(format="%(message)s", level=logging.INFO if args.verbose else logging.WARNING)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    columns = [BASE, "FDConv"] + (["official"] if official_cls else []) + ([] if args.no_condconv else ["CondConv2d"])
    variants = ["eager"] + ([] if args.no_channels_last else ["channels_last"]) + (["compiled"] if args.compile else [])

    times: dict[tuple[str, str, str], dict[str, float | None]] = {}  # (mode, shape, variant) -> column -> ms
    memory: dict[str, dict[str, float]] = {}  # shape -> column -> MiB
    max_rel_diff = 0.0
    for c, hw in args.shapes:
        shape = f"C={c} {hw}x{hw}"
        torch.manual_seed(0)
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        reference = FDConv.from_conv(conv, kernel_num=args.kernel_num)
        layers = {name: _build(name, c, conv, args.kernel_num, official_cls, reference).to(device) for name in columns}
        x = torch.randn(args.batch, c, hw, hw, device=device)
        if official_cls is not None:  # same state dict, same function: the comparison is like for like
            with torch.no_grad():
                ours, theirs = layers["FDConv"].eval()(x), layers["official"].eval()(x)
            max_rel_diff = max(max_rel_diff, ((ours - theirs).abs().max() / theirs.abs().max()).item())
        for mode in ("eval", "train"):
            train = mode == "train"
            for module in layers.values():
                module.train(train)
            for variant in variants:
                logger.info("%s %s %s", mode, shape, variant)
                fns, row = {}, {}
                xv = x.contiguous(memory_format=torch.channels_last) if variant == "channels_last" else x
                xv = xv.detach().requires_grad_(train)
                if variant == "compiled":
                    torch._dynamo.reset()  # fresh caches: no silent fall-back to eager at the recompile limit
                for name, module in layers.items():
                    if name == "official" and variant != "eager":
                        continue  # layout/compile variants of the official layer feed no comparison
                    try:
                        if variant == "compiled":
                            module = torch.compile(module)
                        if variant == "channels_last":
                            module = module.to(memory_format=torch.channels_last)
                        fn = _step(module, xv, train, dtype)
                        fn()  # the first warm-up run; fails here if the variant does not work for this layer
                        fns[name] = fn
                    except Exception as exc:  # noqa: BLE001  (reported in the table as "fails")
                        logger.warning(
                            "%s %s %s: %s fails (%s: %s)",
                            mode,
                            shape,
                            variant,
                            name,
                            type(exc).__name__,
                            str(exc)[:200],
                        )
                        row[name] = None
                row.update(median_times(fns, device, max(args.warmup - 1, 0), args.repeats, args.budget))
                times[(mode, shape, variant)] = row
                if variant == "channels_last":
                    for module in layers.values():
                        module.to(memory_format=torch.contiguous_format)
            if train and not args.no_memory:
                memory[shape] = {}
                for name, module in layers.items():
                    module.zero_grad(set_to_none=True)
                    memory[shape][name] = peak_memory_mib(
                        _step(module, x.detach().requires_grad_(), True, dtype), device
                    )
        del layers, reference, conv

    header_line = (
        f"batch {args.batch}, {args.dtype}, {device}; {machine_description(device, args.threads)}. "
        f"Median ms per call (eval) or per training step (forward + backward); ratios are time / time."
    )
    targets = _targets(args, times)
    out = [f"**Layer benchmark.** {header_line}" if args.markdown else header_line, ""]
    for mode in ("eval", "train"):
        out += [_caption(f"{mode}: ms", args.markdown), _time_table(times, mode, columns, variants, args.markdown), ""]
    if memory:
        out += [
            _caption("peak memory of one training step: MiB", args.markdown),
            _memory_table(memory, columns, args.markdown),
            "",
        ]
    if official_cls is not None:
        out.append(f"official vs FDConv outputs (same state dict, eval): max relative difference {max_rel_diff:.1e}")
        if max_rel_diff > 1e-4:
            out.append(
                "WARNING: the official layer computes a different function here; its times compare unlike layers"
            )
    out.append("Targets (batch 8, the four ResNet-50 shapes, eager float32):" if args.markdown else "Targets:")
    out += [("- " if args.markdown else "  ") + t.line() for t in targets]
    if args.batch != TARGET_BATCH or [tuple(s) for s in args.shapes] != SHAPES or dtype is not None:
        out.append("  (this run's settings differ from the targets': batch 8, the four shapes, float32)")
    print("\n".join(out))
    if args.plot:
        _plot(times, columns, args.plot)
        print(f"plot written to {args.plot}")
    return {
        "times": times,
        "memory": memory,
        "targets": targets,
        "max_rel_diff": max_rel_diff if official_cls else None,
    }


def _caption(text: str, markdown: bool) -> str:
    return f"*{text}*" if markdown else f"{text}:"


def _fmt(ms: float | None, missing: str = "-") -> str:
    if ms is None:
        return missing
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def _time_table(times: dict, mode: str, columns: list[str], variants: list[str], markdown: bool) -> str:
    header = ["shape"] + [f"{c} ms" for c in columns] + ["FDConv / conv"]
    header += ["official / FDConv"] if "official" in columns else []
    header += ["CondConv2d / conv"] if "CondConv2d" in columns else []
    rows = []
    for (m, shape, variant), t in times.items():
        if m != mode:
            continue
        row = [shape if variant == "eager" else f"{shape} {variant}"] + [
            _fmt(t.get(c), "fails" if c in t else "-") for c in columns
        ]
        row.append(_ratio(t.get("FDConv"), t.get(BASE)))
        if "official" in columns:
            row.append(_ratio(t.get("official"), t.get("FDConv")))
        if "CondConv2d" in columns:
            row.append(_ratio(t.get("CondConv2d"), t.get(BASE)))
        rows.append(row)
    rows.sort(key=lambda r: variants.index(next((v for v in variants if r[0].endswith(v)), "eager")))
    return format_table(header, rows, markdown)


def _memory_table(memory: dict, columns: list[str], markdown: bool) -> str:
    header = (
        ["shape"]
        + [f"{c} MiB" for c in columns]
        + ["FDConv / conv"]
        + (["official / FDConv"] if "official" in columns else [])
    )
    rows = []
    for shape, m in memory.items():
        row = [shape] + [_fmt(m[c]) for c in columns] + [_ratio(m["FDConv"], m[BASE])]
        rows.append(row + ([_ratio(m["official"], m["FDConv"])] if "official" in columns else []))
    return format_table(header, rows, markdown)


def _targets(args: argparse.Namespace, times: dict) -> list[Target]:
    def values(mode: str, num: str, den: str) -> dict[str, float]:
        out = {}
        for (m, shape, variant), t in times.items():
            if m == mode and variant == "eager" and t.get(num) is not None and t.get(den) is not None:
                out[f"C={shape.split()[0][2:]}"] = t[num] / t[den]
        return out

    targets = [Target("layer eval: FDConv time / nn.Conv2d, every shape", 3.0, True, values("eval", "FDConv", BASE))]
    if args.official:
        targets += [
            Target(
                "layer eval: speed-up over the official layer, every shape",
                5.0,
                False,
                values("eval", "official", "FDConv"),
            ),
            Target(
                "layer train step: speed-up over the official layer, every shape",
                3.0,
                False,
                values("train", "official", "FDConv"),
            ),
        ]
    else:
        targets += [Target("layer eval/train: speed-up over the official layer (pass --official PATH)", 5.0, False, {})]
    return targets


def _plot(times: dict, columns: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c in columns if c != BASE]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, mode in zip(axes, ("eval", "train")):
        rows = [(f"{s}\n{v}" if v != "eager" else s, t) for (m, s, v), t in times.items() if m == mode]
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            heights = [t[name] / t[BASE] if t.get(name) and t.get(BASE) else 0.0 for _, t in rows]
            ax.bar([j + i * width for j in range(len(rows))], heights, width, label=name)
        ax.axhline(1.0, color="k", lw=0.8)
        if mode == "eval":
            ax.axhline(3.0, color="gray", lw=0.8, ls="--", label="target for FDConv (3x)")
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(rows))],
            [label for label, _ in rows],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        ax.set_yscale("log")
        ax.set_title(f"{mode} (time / nn.Conv2d)")
    axes[0].set_ylabel("time / nn.Conv2d")
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
