"""FDConv models against their base timm models: latency (eval), training step and peak training memory.

    python benchmarks/bench_models.py                          # CPU, 2 threads, batch 8, 224x224
    python benchmarks/bench_models.py --device cuda --dtype bfloat16 --plot models.png

Pairs: resnet50, convnext_tiny, swin_tiny_patch4_window7_224 and their _fdconv variants, built in the same
process; times are medians after warm-up and ratios are against the base model. Peak training memory is
measured per model in a fresh process: on the CPU (Linux) the peak resident set during one training step
above the resident set before it, on CUDA the peak allocated memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, median_time  # noqa: E402

import fdconv_zoo  # noqa: E402,F401  (registers the FDConv models)
import timm  # noqa: E402

PAIRS = ["resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224"]


def _train_step(model, x, dtype):
    def run():
        model.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()

    return run


def _eval_step(model, x, dtype):
    def run():
        with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            model(x)

    return run


def measure_memory(name: str, args: argparse.Namespace) -> float:
    """Peak training memory (MiB) of one model, measured in this (fresh) process."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    model = timm.create_model(name).to(device).train()
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    step = _train_step(model, x, dtype)
    if device.type == "cuda":
        step()  # allocator warm-up; the caching allocator reports the true peak of the next step
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # CPU (Linux): reset the resident-set high-water mark right before the step, so the model's construction
    # temporaries do not mask it; the step's peak is then VmHWM above the resident set it started from.
    Path("/proc/self/clear_refs").write_text("5")
    before = _proc_status_kib("VmRSS")
    step()
    return (_proc_status_kib("VmHWM") - before) / 1024


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (peak CPU memory needs Linux); use --no-memory")


def _memory_in_subprocess(name: str, argv: list[str]) -> float:
    out = subprocess.run([sys.executable, __file__, "--_memory-of", name, *argv], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["mib"]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--models", nargs="+", default=PAIRS, help="base timm architectures to compare with their _fdconv variants")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--_memory-of", dest="memory_of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of:
        print(json.dumps({"mib": measure_memory(args.memory_of, args)}))
        return
    child_argv = [a for a in argv if a != "--no-memory"]

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    rows, ratios = [], {}
    for base in args.models:
        x = torch.randn(args.batch, 3, 224, 224, device=device)
        result = {}
        for name in (base, f"{base}_fdconv"):
            model = timm.create_model(name).to(device)
            result[name] = {
                "eval": median_time(_eval_step(model.eval(), x, dtype), device, args.warmup, args.repeats),
                "train": median_time(_train_step(model.train(), x, dtype), device, args.warmup, args.repeats),
                "params": fdconv_zoo.count_parameters(model) / 1e6,
                "memory": None if args.no_memory else _memory_in_subprocess(name, child_argv),
            }
            del model
        b, f = result[base], result[f"{base}_fdconv"]
        ratios[base] = {k: f[k] / b[k] for k in ("eval", "train")}
        mem = "-" if args.no_memory else f"{b['memory']:.0f} / {f['memory']:.0f} ({f['memory'] / b['memory']:.2f}x)"
        rows.append([
            base, f"{b['params']:.1f} / {f['params']:.1f}",
            f"{b['eval']:.0f} / {f['eval']:.0f} ({ratios[base]['eval']:.2f}x)",
            f"{b['train']:.0f} / {f['train']:.0f} ({ratios[base]['train']:.2f}x)", mem,
        ])
    header = [f"B={args.batch}, 224x224, {device}, {args.dtype}", "params M base / FDConv", "eval ms", "train step ms", "peak train MiB"]
    print(format_table(header, rows))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        for i, mode in enumerate(("eval", "train")):
            ax.bar([j + i * 0.4 for j in range(len(ratios))], [r[mode] for r in ratios.values()], 0.4, label=mode)
        ax.set_xticks([j + 0.2 for j in range(len(ratios))], list(ratios))
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylabel("FDConv time / base time")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
