"""FDConv models against their base timm models: latency (eval), training step and peak training memory.

    python benchmarks/bench_models.py                            # CPU, 2 threads, batch 8, 224x224
    python benchmarks/bench_models.py --markdown --plot models.png
    python benchmarks/bench_models.py --device cuda --dtype bfloat16 --compile
    python benchmarks/bench_models.py --quick                    # smoke run: one small pair

Pairs: resnet50, convnext_tiny, swin_tiny_patch4_window7_224 and their _fdconv variants (random init), built
and timed in the same process, round-robin, as medians after warm-up; ratios are FDConv / base. channels_last
rows (by default for the ResNets; ``--channels-last all``) and torch.compile rows (``--compile``) use the same
comparison; a variant that fails for a model shows "fails". Peak training memory is that of one training step:
by default the tensors allocated above what was allocated before it (CUDA: ``max_memory_allocated``; CPU: the
profiler's allocation events), or with ``--memory rss`` (CPU, Linux) the peak resident set of the step above
the resident set before it, measured per model in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timm  # noqa: E402
from _common import (  # noqa: E402
    Target,
    check_plot_path,
    format_pair,
    format_table,
    logger,
    machine_description,
    median_times,
    peak_memory_mib,
    save_figure,
)

import fdconv_zoo  # noqa: E402  (registers the FDConv models)

__all__ = ["PAIRS", "main", "measure_memory"]

PAIRS = ["resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224"]
# The project's model targets (resnet50_fdconv vs resnet50, batch 8, 224x224, float32, eager).
TARGETS = {"eval": 2.5, "train": 3.0, "memory": 2.0}


def _train_step(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()

    return run


def _eval_step(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            model(x)

    return run


def _create(name: str, args: argparse.Namespace) -> torch.nn.Module:
    return timm.create_model(name, **args.model_kwargs)


def measure_memory(name: str, args: argparse.Namespace) -> float:
    """Peak resident-set growth (MiB) of one training step, measured in this (fresh) process (CPU, Linux)."""
    torch.set_num_threads(args.threads)
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    model = _create(name, args).train()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    step = _train_step(model, x, dtype)
    # Reset the resident-set high-water mark right before the step, so the model's construction temporaries do
    # not mask it; the step's peak is then VmHWM above the resident set it started from.
    Path("/proc/self/clear_refs").write_text("5")
    before = _proc_status_kib("VmRSS")
    step()
    return (_proc_status_kib("VmHWM") - before) / 1024


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (--memory rss needs Linux); use --memory allocator")


def _rss_in_subprocess(name: str, argv: list[str]) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--_memory-of", name, *argv], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["mib"]


def _model_kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"--model-kwargs {text!r} is not JSON ({exc}); e.g. '{{\"num_classes\": 10}}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--model-kwargs {text!r}: give a JSON object, e.g. '{{\"num_classes\": 10}}'")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads); default 2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed runs per model and row (at least 1: it checks the variant works)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per model (at most)")
    p.add_argument(
        "--budget",
        type=float,
        default=10.0,
        help="seconds of timed runs after which a slow model stops early (>= 3 runs)",
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="autocast dtype")
    p.add_argument(
        "--models", nargs="+", default=PAIRS, help="base timm architectures, each compared with its _fdconv variant"
    )
    p.add_argument(
        "--model-kwargs",
        type=_model_kwargs,
        default={},
        help="JSON keyword arguments for timm.create_model (both models)",
    )
    p.add_argument(
        "--memory",
        choices=["allocator", "rss", "none"],
        default="allocator",
        help="peak training memory: tensor allocations (default), resident set in a fresh process (CPU), or skip",
    )
    p.add_argument(
        "--channels-last",
        choices=["auto", "all", "none"],
        default="auto",
        help="channels_last rows: auto = ResNets only (default; keeps the run short), all models, or none",
    )
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (minutes per model on the CPU)")
    p.add_argument(
        "--markdown", action="store_true", help="GitHub Markdown table with a header line naming the machine"
    )
    p.add_argument("--plot", type=Path, metavar="PNG", help="write a bar chart of the FDConv / base ratios")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: first model only, batch 2, 64x64, 1 timed run, no channels_last",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    p.add_argument("--_memory-of", dest="memory_of", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict | None:
    """Run the benchmark, print the table; returns the measured numbers (for tests and scripting)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.img_size, args.warmup, args.repeats, args.channels_last = (
            args.models[:1],
            2,
            64,
            1,
            1,
            "none",
        )
    if args.memory_of:
        print(json.dumps({"mib": measure_memory(args.memory_of, args)}))
        return None
    if min(args.batch, args.threads, args.img_size, args.repeats) < 1 or args.warmup < 0:
        parser.error("--batch, --threads, --img-size and --repeats must be >= 1, --warmup >= 0")
    device = torch.device(args.device)
    if args.memory == "rss" and device.type != "cpu":
        parser.error("--memory rss measures the CPU resident set; use --memory allocator on CUDA")
    try:
        check_plot_path(args.plot, args.overwrite)
        unknown = [m for m in args.models if not timm.is_model(m) or not timm.is_model(f"{m}_fdconv")]
        if unknown:
            raise ValueError(
                f"--models: no FDConv variant for {', '.join(unknown)}; choose from {', '.join(_fdconv_bases())}"
            )
    except (OSError, ValueError, ImportError) as exc:
        parser.error(str(exc))
    logging.basicConfig(format="%(message)s", level=logging.INFO if args.verbose else logging.WARNING)
    torch.set_num_threads(args.threads)
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    child_argv = [a for a in argv if a not in ("--markdown", "-v", "--verbose", "--overwrite")]

    results: dict[tuple[str, str], dict] = {}  # (base, variant) -> {eval, train: {name: ms|None}}
    memory: dict[str, dict[str, float]] = {}
    params: dict[str, tuple[float, float]] = {}
    for base in args.models:
        names = [base, f"{base}_fdconv"]
        torch.manual_seed(0)
        models = {n: _create(n, args).to(device) for n in names}
        params[base] = tuple(fdconv_zoo.count_parameters(models[n]) / 1e6 for n in names)  # type: ignore[assignment]
        x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
        channels_last = args.channels_last == "all" or (args.channels_last == "auto" and base.startswith("resnet"))
        variants = ["eager"] + (["channels_last"] if channels_last else []) + (["compiled"] if args.compile else [])
        for variant in variants:
            row: dict[str, dict[str, float | None]] = {}
            if variant == "compiled":
                torch._dynamo.reset()  # fresh caches: no silent fall-back to eager at the recompile limit
            for mode, make in (("eval", _eval_step), ("train", _train_step)):
                logger.info("%s %s %s", base, variant, mode)
                fns, row[mode] = {}, {}
                for name, model in models.items():
                    model.train(mode == "train")
                    try:
                        if variant == "channels_last":
                            model = model.to(memory_format=torch.channels_last)
                        xv = x.contiguous(memory_format=torch.channels_last) if variant == "channels_last" else x
                        fn = make(torch.compile(model) if variant == "compiled" else model, xv, dtype)
                        fn()  # the first warm-up run; fails here if the variant does not work for this model
                        fns[name] = fn
                    except Exception as exc:  # noqa: BLE001  (reported in the table as "fails")
                        logger.warning(
                            "%s %s %s: %s fails (%s: %s)", base, variant, mode, name, type(exc).__name__, str(exc)[:200]
                        )
                        row[mode][name] = None
                row[mode].update(median_times(fns, device, max(args.warmup - 1, 0), args.repeats, args.budget))
            results[(base, variant)] = row
            if variant == "channels_last":
                for model in models.values():
                    model.to(memory_format=torch.contiguous_format)
        if args.memory == "allocator":
            memory[base] = {}
            for name, model in models.items():
                model.train().zero_grad(set_to_none=True)
                memory[base][name] = peak_memory_mib(_train_step(model, x, dtype), device)
        del models
        if args.memory == "rss":
            memory[base] = {name: _rss_in_subprocess(name, child_argv) for name in names}

    header_line = (
        f"batch {args.batch}, {args.img_size}x{args.img_size}, {args.dtype}, {device}; {machine_description(device, args.threads)}. "
        "Median ms per forward (eval) or training step; cells are base / FDConv model, ratios FDConv / base."
    )
    table = _table(results, memory, params, args)
    targets = _targets(results, memory)
    out = [f"**Model benchmark.** {header_line}" if args.markdown else header_line, "", table, ""]
    out.append(
        "Targets (resnet50_fdconv vs resnet50, batch 8, 224x224, eager float32):" if args.markdown else "Targets:"
    )
    out += [("- " if args.markdown else "  ") + t.line() for t in targets]
    if args.batch != 8 or args.img_size != 224 or dtype is not None or args.model_kwargs:
        out.append("  (this run's settings differ from the targets': batch 8, 224x224, float32, default models)")
    print("\n".join(out))
    if args.plot:
        _plot(results, args.plot)
        print(f"plot written to {args.plot}")
    return {"results": results, "memory": memory, "params": params, "targets": targets}


def _fdconv_bases() -> list[str]:
    return sorted(m[: -len("_fdconv")] for m in timm.list_models("*_fdconv"))


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{b / a:.2f}x"


def _table(results: dict, memory: dict, params: dict, args: argparse.Namespace) -> str:
    header = [
        "model",
        "params M",
        "eval ms",
        "eval ratio",
        "train step ms",
        "train ratio",
        "peak train MiB",
        "memory ratio",
    ]
    rows = []
    for (base, variant), r in sorted(results.items(), key=lambda kv: (kv[0][1] != "eager", kv[0][1])):
        b, f = base, f"{base}_fdconv"
        eager = variant == "eager"
        mem = memory.get(base) if eager else None
        rows.append(
            [
                base if eager else f"{base} {variant}",
                format_pair(*params[base]) if eager else "",
                format_pair(r["eval"].get(b), r["eval"].get(f)),
                _ratio(r["eval"].get(b), r["eval"].get(f)),
                format_pair(r["train"].get(b), r["train"].get(f)),
                _ratio(r["train"].get(b), r["train"].get(f)),
                format_pair(mem[b], mem[f]) if mem else "-",
                _ratio(mem[b], mem[f]) if mem else "-",
            ]
        )
    return format_table(header, rows, args.markdown)


def _targets(results: dict, memory: dict) -> list[Target]:
    r = results.get(("resnet50", "eager"))
    if r is None:
        return [Target("resnet50_fdconv vs resnet50 (include resnet50 in --models)", 0.0, True, {})]

    def ratio(d: dict) -> dict[str, float]:
        a, b = d.get("resnet50"), d.get("resnet50_fdconv")
        return {"resnet50": b / a} if a and b else {}

    return [
        Target("resnet50_fdconv eval latency / resnet50", TARGETS["eval"], True, ratio(r["eval"])),
        Target("resnet50_fdconv training step / resnet50", TARGETS["train"], True, ratio(r["train"])),
        Target(
            "resnet50_fdconv peak training memory / resnet50",
            TARGETS["memory"],
            True,
            ratio(memory.get("resnet50", {})),
        ),
    ]


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, ratios = [], {"eval": [], "train": []}
    for (base, variant), r in results.items():
        labels.append(base if variant == "eager" else f"{base}\n{variant}")
        for mode in ratios:
            a, b = r[mode].get(base), r[mode].get(f"{base}_fdconv")
            ratios[mode].append(b / a if a and b else 0.0)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 3.8))
    for i, mode in enumerate(ratios):
        ax.bar([j + i * 0.4 for j in range(len(labels))], ratios[mode], 0.4, label=mode)
    ax.set_xticks([j + 0.2 for j in range(len(labels))], labels, fontsize=8)
    ax.axhline(1.0, color="k", lw=0.8)
    for mode, style in (("eval", ":"), ("train", "--")):
        ax.axhline(TARGETS[mode], color="gray", lw=0.8, ls=style, label=f"resnet50 {mode} target ({TARGETS[mode]:g}x)")
    ax.set_ylabel("FDConv model time / base time")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
