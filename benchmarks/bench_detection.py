"""Detection benchmark: one fine-tuning step and one evaluation forward of a transformers detector (RT-DETRv2 by
default) on the FDConv backbone against the same detector on the plain backbone, built and timed in one process.

Both detectors are what ``fdconv-zoo finetune-detection`` trains (frozen batch norms, frozen stem and first
stage, FDConv's attentions trainable; random init, which does not change the cost), fed the same images and
targets. The two models take turns (round-robin), so background load spreads over both; the table gives
medians in seconds and the FDConv / plain ratio with its range within rounds.

    python benchmarks/bench_detection.py                       # resnet50, 640 px, batch 2, CPU
    python benchmarks/bench_detection.py --device cuda --backbone resnet18 --detector d-fine
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_description, medians, ratio_range, round_robin_times  # noqa: E402

from fdconv_zoo.finetune.detection import build_detector, freeze_backbone_defaults, load_backbone_source  # noqa: E402

logger = logging.getLogger("fdconv_bench")

CLASSES = {i: f"class{i}" for i in range(80)}  # COCO's number of classes
# --quick: a small detector head, so the smoke run takes seconds
QUICK_DETECTOR = dict(
    d_model=32,
    encoder_hidden_dim=32,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    decoder_layers=2,  # one layer leaves nothing to tie the box heads to
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    num_queries=10,
    num_denoising=0,
    decoder_in_channels=[32, 32, 32],
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50", help="plain timm backbone; its FDConv twin is <name>_fdconv")
    p.add_argument("--detector", default="rt-detr-v2", choices=["rt-detr-v2", "d-fine", "detr"])
    p.add_argument("--size", type=int, default=640, help="square image size (multiple of 32; default 640)")
    p.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads); default 2")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per model and mode")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per model and mode (at most)")
    p.add_argument("--budget", type=float, default=120.0, help="seconds of timed runs per model and mode")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--quick", action="store_true", help="smoke run: resnet18, 64 px, a tiny head, one timed run")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def _targets(batch: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Three boxes per image (normalised centre/size), as the image processor gives them."""
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2], [0.5, 0.5, 0.6, 0.6]], device=device)
    labels = torch.tensor([1, 17, 42], device=device)
    return [{"class_labels": labels, "boxes": boxes} for _ in range(batch)]


def _step(model: torch.nn.Module, x: torch.Tensor, targets: list, train: bool) -> Callable[[], None]:
    def train_step() -> None:
        model(pixel_values=x, labels=targets).loss.backward()
        model.zero_grad(set_to_none=True)

    def eval_forward() -> None:
        with torch.no_grad():
            model(pixel_values=x)

    return train_step if train else eval_forward


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table; returns the measured medians (ms) and ratios."""
    parser = _parser()
    args = parser.parse_args(argv)
    overrides = {}
    if args.quick:
        args.backbone, args.size, args.warmup, args.repeats = "resnet18", 64, 1, 1
        overrides = QUICK_DETECTOR if args.detector != "detr" else dict(d_model=32, num_queries=10)
    if args.size % 32 or min(args.batch, args.threads, args.repeats, args.warmup) < 1:
        parser.error("--size must be a multiple of 32; --batch, --threads, --repeats, --warmup at least 1")
    logging.basicConfig(format="%(message)s", level=logging.INFO if args.verbose else logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = {"plain": args.backbone, "fdconv": f"{args.backbone}_fdconv"}
    models = {}
    for key, name in names.items():
        torch.manual_seed(0)
        model = build_detector(args.detector, load_backbone_source(name), CLASSES, **overrides)
        freeze_backbone_defaults(model)
        models[key] = model.to(device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    targets = _targets(args.batch, device)
    result: dict = {"ms": {}, "ratio": {}, "range": {}}
    for mode in ("train", "eval"):
        logger.info("timing %s", mode)
        for model in models.values():
            model.train(mode == "train")
        fns = {key: _step(model, x, targets, mode == "train") for key, model in models.items()}
        rounds = round_robin_times(fns, device, args.warmup, args.repeats, budget_s=args.budget)
        result["ms"][mode] = medians(rounds)
        result["ratio"][mode] = result["ms"][mode]["fdconv"] / result["ms"][mode]["plain"]
        result["range"][mode] = ratio_range(rounds["fdconv"], rounds["plain"])
    rows = []
    for mode, label in (("train", "training step (s)"), ("eval", "eval forward (s)")):
        spread = result["range"][mode]
        ratio = f"{result['ratio'][mode]:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")
        ms = result["ms"][mode]
        rows.append([label, f"{ms['plain'] / 1e3:.3f}", f"{ms['fdconv'] / 1e3:.3f}", ratio])
    print(
        f"Detection benchmark: {args.detector}, {args.size}x{args.size}, batch {args.batch}, medians of up to "
        f"{args.repeats} runs\n{machine_description(device, args.threads)}\n"
    )
    print(format_table(["", names["plain"], names["fdconv"], "FDConv / plain"], rows, markdown=args.markdown))
    return result


if __name__ == "__main__":
    main()
