"""FDConv layer speed against nn.Conv2d (baseline), the official layer and timm's CondConv2d, same process.

    python benchmarks/bench_layer.py                       # CPU, 2 threads, batch 8, eval + training step
    python benchmarks/bench_layer.py --official ~/FDConv/FDConv_detection/mmdet_custom/FDConv.py
    python benchmarks/bench_layer.py --device cuda --dtype bfloat16 --plot layer.png

Shapes: ResNet-50's four 3x3 convolutions (C=64 at 56x56, 128 at 28x28, 256 at 14x14, 512 at 7x7), paper
settings (kernel_num=64). Times are medians of repeated runs after warm-up; ratios are against nn.Conv2d.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, load_official_fdconv, median_time, peak_cuda_memory  # noqa: E402

from fdconv_zoo import FDConv  # noqa: E402

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]


class RoutedCondConv(nn.Module):
    """timm's CondConv2d with the routing its blocks use: pooled features -> linear -> sigmoid."""

    def __init__(self, channels: int, num_experts: int) -> None:
        super().__init__()
        from timm.layers import CondConv2d

        self.routing = nn.Linear(channels, num_experts)
        self.conv = CondConv2d(channels, channels, 3, padding=1, bias=False, num_experts=num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, torch.sigmoid(self.routing(x.mean((2, 3)))))


def _step(module: nn.Module, x: torch.Tensor, train: bool, dtype: torch.dtype | None):
    def run():
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            if train:
                module.zero_grad(set_to_none=True)
                module(x).float().square().mean().backward()
            else:
                with torch.no_grad():
                    module(x)

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="autocast dtype (FFTs stay float32)")
    parser.add_argument("--official", type=Path, help="path to the official FDConv.py to add as a column")
    parser.add_argument("--no-condconv", action="store_true", help="skip timm's CondConv2d column")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row per shape")
    parser.add_argument("--channels-last", action="store_true", help="add a channels_last row per shape")
    parser.add_argument("--plot", type=Path, help="write a PNG bar chart of the ratios")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    official_cls = load_official_fdconv(args.official) if args.official else None
    columns = ["nn.Conv2d", "FDConv"] + (["official"] if official_cls else []) + ([] if args.no_condconv else ["CondConv2d"])
    torch.manual_seed(0)

    rows, ratios = [], {}
    for mode in ("eval", "train"):
        for c, hw in SHAPES:
            conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
            variants: dict[str, nn.Module] = {"nn.Conv2d": conv, "FDConv": FDConv.from_conv(conv, kernel_num=64)}
            if official_cls is not None:
                variants["official"] = official_cls(c, c, kernel_size=3, padding=1, bias=False, kernel_num=64)
            if not args.no_condconv:
                variants["CondConv2d"] = RoutedCondConv(c, num_experts=4)
            extra = []
            if args.compile:
                extra.append(("FDConv compiled", torch.compile(variants["FDConv"]), None))
            if args.channels_last:
                extra.append(("FDConv channels_last", variants["FDConv"], torch.channels_last))
            x = torch.randn(args.batch, c, hw, hw, device=device, requires_grad=mode == "train")
            times = {}
            for name, module in variants.items():
                module.to(device).train(mode == "train")
                times[name] = median_time(_step(module, x, mode == "train", dtype), device, args.warmup, args.repeats)
            for name, module, fmt in extra:
                xx = x if fmt is None else x.detach().contiguous(memory_format=fmt).requires_grad_(mode == "train")
                times[name] = median_time(_step(module, xx, mode == "train", dtype), device, args.warmup, args.repeats)
            memory = peak_cuda_memory(_step(variants["FDConv"], x, mode == "train", dtype), device)
            base = times["nn.Conv2d"]
            label = f"{mode} C={c} {hw}x{hw}"
            row = [label] + [f"{times[k]:.1f} ({times[k] / base:.1f}x)" for k in columns]
            row += [f"{times[n]:.1f} ({times[n] / base:.1f}x)" for n, _, _ in extra]
            if official_cls is not None:
                row.append(f"{times['official'] / times['FDConv']:.1f}x")
            if memory is not None:
                row.append(f"{memory:.0f}")
            rows.append(row)
            ratios[label] = {k: times[k] / base for k in times}
    header = ["B=%d, %s, %s" % (args.batch, device, args.dtype)] + [f"{k} ms" for k in columns]
    header += [f"{n} ms" for n in (["FDConv compiled"] if args.compile else []) + (["FDConv channels_last"] if args.channels_last else [])]
    if official_cls is not None:
        header.append("speed-up vs official")
    if device.type == "cuda":
        header.append("FDConv peak MiB")
    print(format_table(header, rows))
    if args.plot:
        _plot(ratios, args.plot)


def _plot(ratios: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(ratios)
    names = [n for n in next(iter(ratios.values())) if n != "nn.Conv2d"]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([j + i * width for j in range(len(labels))], [ratios[l][name] for l in labels], width, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=30, ha="right")
    ax.set_ylabel("time / nn.Conv2d")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
