"""Measure on a GPU what bench_cost.py predicts: eager, compiled and CUDA-graph (reduce-overhead) times.

    python benchmarks/gpu_measure.py --out benchmarks/results/auto.json     # on a CUDA machine (gpu_check.sh)
    python benchmarks/gpu_measure.py --dry-run --out /tmp/cpu.json          # the same code on the CPU, tiny sizes

Runs, in this order, until ``--budget`` seconds have passed (the cells left are recorded as skipped, so a short
session still ends with a file): the official test vectors on the device (cuda_check.py), then for each cell of
the plan below the base model and its ``_fdconv`` variant (and the official backbone, ``--official``) round-robin
(bench_dense.py's method: medians after warm-up, eval = a no-grad forward, training step = forward, loss,
backward), with each model's peak training-step memory in eager cells. The JSON file is rewritten after every
cell (atomically), so a run cut short keeps what it measured. ``--out auto`` names it after the GPU:
``benchmarks/results/<gpu-name-slug>.json``.

Plan (priority order): eager float32 and bfloat16 autocast at 512x512 and 800x1333 (batch 2); the kernels of the
compiled graph on the device (bench_cost.py's count, ResNet-18 at 128x128, batch 1: on a GPU inductor's
generated kernels are the Triton kernels it launches); compiled (``torch.compile``, static shapes) and
reduce-overhead (``mode="reduce-overhead"``: CUDA-graph replay) at 512x512 in bfloat16, then float32; then the
compiled rows at 800x1333.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cuda_check  # noqa: E402
from _common import load_official_fdconv, machine_description, medians, peak_memory_mib, round_robin_times  # noqa: E402
from bench_cost import COMPILE_SETTING, compiled_kernels  # noqa: E402
from bench_dense import Setting, activate_attentions, official_backbone, training_or_eval_step  # noqa: E402

from fdconv_zoo import FDConv  # noqa: E402

__all__ = ["KERNEL_COUNT", "PLAN", "compiled_kernel_counts", "main", "plan_cells", "slug"]

RESULTS = Path(__file__).resolve().parent / "results"
_S512, _S1333 = Setting("resnet50", 512, 512, 2), Setting("resnet50", 800, 1333, 2)
KERNEL_COUNT = "kernel count"  # the compiled graph's kernels on the device (compiled_kernel_counts), not a timing
# (setting, dtype, execution), most wanted first.
PLAN = [
    (_S512, "float32", "eager"),
    (_S512, "bfloat16", "eager"),
    (_S1333, "float32", "eager"),
    (_S1333, "bfloat16", "eager"),
    (COMPILE_SETTING, "float32", KERNEL_COUNT),
    (_S512, "bfloat16", "compiled"),
    (_S512, "bfloat16", "reduce-overhead"),
    (_S512, "float32", "compiled"),
    (_S512, "float32", "reduce-overhead"),
    (_S1333, "bfloat16", "compiled"),
    (_S1333, "bfloat16", "reduce-overhead"),
]
DRY_RUN_SETTING = Setting("resnet18", 64, 64, 2)
DRY_RUN_COUNT_SETTING = Setting("resnet18", 64, 64, 1, classifier=True)
DRY_RUN_MODEL = {"layers": [1, 1, 1, 1], "channels": [16, 32, 48, 64]}  # a four-block ResNet: seconds on a CPU


def slug(name: str) -> str:
    """A file name from a device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def plan_cells(dry_run: bool) -> list[tuple[Setting, str, str]]:
    """The cells to measure: :data:`PLAN`, or in a dry run one tiny setting, float32 and bfloat16, eager, and the
    kernel count."""
    if dry_run:
        return [
            (DRY_RUN_SETTING, "float32", "eager"),
            (DRY_RUN_SETTING, "bfloat16", "eager"),
            (DRY_RUN_COUNT_SETTING, "float32", KERNEL_COUNT),
        ]
    return list(PLAN)


def _step(
    model: nn.Module, x: torch.Tensor, train: bool, dtype: torch.dtype | None, graphs: bool
) -> Callable[[], None]:
    run = training_or_eval_step(model, x, train, dtype)
    if not graphs:
        return run

    def replay() -> None:
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are not read again
        run()

    return replay


def _measure_cell(
    setting: Setting,
    dtype_name: str,
    execution: str,
    device: torch.device,
    official_cls: type | None,
    repeats: int,
    model_kwargs: dict,
) -> dict:
    torch.manual_seed(0)
    fdconv = setting.create(f"{setting.model}_fdconv", **model_kwargs)
    activate_attentions(fdconv)
    models = {"base": setting.create(setting.model, **model_kwargs), "fdconv": fdconv}
    if official_cls is not None and execution == "eager" and setting.model.startswith("resnet") and not model_kwargs:
        models["official"] = official_backbone(setting, fdconv, official_cls)
    models = {k: m.to(device) for k, m in models.items()}
    x = torch.randn(setting.batch, 3, setting.height, setting.width, device=device)
    dtype = None if dtype_name == "float32" else getattr(torch, dtype_name)
    cell: dict = {"setting": setting.spec, "dtype": dtype_name, "execution": execution}
    torch._dynamo.reset()
    for mode in ("eval", "train"):
        fns, started = {}, time.perf_counter()
        for name, model in models.items():
            model.train(mode == "train")
            compiled = (
                model
                if execution == "eager"
                else torch.compile(
                    model, dynamic=False, mode="reduce-overhead" if execution == "reduce-overhead" else None
                )
            )
            fn = _step(compiled, x, mode == "train", dtype, execution == "reduce-overhead")
            try:
                fn()  # the first call compiles (compiled rows) and checks the variant runs here
                fns[name] = fn
            except Exception as exc:  # noqa: BLE001  (recorded in the file, the other models go on)
                cell.setdefault("errors", {})[f"{mode} {name}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rounds = round_robin_times(fns, device, warmup=1 if device.type == "cpu" else 2, repeats=repeats)
        cell[f"{mode}_ms"] = medians(rounds)
        cell[f"{mode}_rounds_ms"] = rounds
        cell[f"{mode}_wall_s"] = time.perf_counter() - started
    if execution == "eager":
        cell["peak_train_mib"] = {}
        for name, model in models.items():
            model.train().zero_grad(set_to_none=True)
            try:
                cell["peak_train_mib"][name] = peak_memory_mib(training_or_eval_step(model, x, True, dtype), device)
            except Exception as exc:  # noqa: BLE001  (recorded, as a failed timing is)
                cell.setdefault("errors", {})[f"memory {name}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    for key in ("eval", "train"):
        ms = cell[f"{key}_ms"]
        if "base" in ms and "fdconv" in ms:
            cell[f"{key}_fdconv_over_base"] = ms["fdconv"] / ms["base"]
        if "official" in ms and "fdconv" in ms:
            cell[f"{key}_official_over_fdconv"] = ms["official"] / ms["fdconv"]
    return cell


def compiled_kernel_counts(setting: Setting, device: torch.device, model_kwargs: dict) -> dict:
    """bench_cost.py's count of the compiled eval graph's kernels, compiled for ``device``: the base model and its
    FDConv variant (on the CPU without building the C++ kernels). On a GPU the C++-only ``emitted`` count does not
    apply and is left out."""
    x = torch.randn(setting.batch, 3, setting.height, setting.width, device=device)
    counts: dict = {"setting": setting.spec}
    for name in (setting.model, f"{setting.model}_fdconv"):
        torch.manual_seed(0)
        model = setting.create(name, **model_kwargs).to(device)
        counts[name] = compiled_kernels(model, x, "cuda", skip_cpp_compiler=device.type == "cpu")
        if device.type != "cpu":
            del counts[name]["emitted"]
        counts[f"{name} layers"] = sum(isinstance(m, FDConv) for m in model.modules())
    base, fdconv = counts[setting.model], counts[f"{setting.model}_fdconv"]
    layers = max(counts[f"{setting.model}_fdconv layers"], 1)
    counts["generated per FDConv layer over base"] = (fdconv["generated"] - base["generated"]) / layers
    return counts


def _write(results: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="on the CPU, tiny sizes, eager only: checks the script")
    p.add_argument("--official", type=Path, metavar="PATH", help="your copy of the official FDConv.py (eager cells)")
    p.add_argument("--out", default="auto", help="JSON file, or 'auto': benchmarks/results/<gpu-slug>.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--budget", type=float, default=400.0, help="seconds; the cells left after it are skipped")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per model and cell")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.dry_run else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here: run on a GPU machine, or pass --dry-run to check the script on the CPU")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu-dry-run"
    out = RESULTS / f"{slug(name)}.json" if args.out == "auto" else Path(args.out)
    if out.exists() and not args.overwrite:
        p.error(f"--out: {out} exists; pass --overwrite to replace it or choose another path")
    try:
        official_cls = load_official_fdconv(args.official) if args.official else None
    except (OSError, RuntimeError) as exc:
        p.error(str(exc))
    started = time.perf_counter()
    results: dict = {
        "device": name,
        "machine": machine_description(device, torch.get_num_threads()),
        "command": "python benchmarks/gpu_measure.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "budget_s": args.budget,
    }
    failures = cuda_check.run_checks(device, ["golden"] if args.dry_run else list(cuda_check.CHECKS))
    results["correctness"] = {"passed": not failures, "failures": failures}
    results["cells"] = []
    _write(results, out)
    kwargs = DRY_RUN_MODEL if args.dry_run else {}
    for setting, dtype_name, execution in plan_cells(args.dry_run):
        if time.perf_counter() - started > args.budget:
            results["cells"].append(
                {"setting": setting.spec, "dtype": dtype_name, "execution": execution, "skipped": "time budget"}
            )
            continue
        print(f"measuring {setting} {dtype_name} {execution}", flush=True)
        results["in_progress"] = f"{setting.spec} {dtype_name} {execution}"  # what a hard time limit cut short
        _write(results, out)
        if execution == KERNEL_COUNT:
            results["compiled_kernels"] = compiled_kernel_counts(setting, device, kwargs)
        else:
            results["cells"].append(
                _measure_cell(setting, dtype_name, execution, device, official_cls, args.repeats, kwargs)
            )
        del results["in_progress"]
        results["elapsed_s"] = time.perf_counter() - started
        _write(results, out)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["elapsed_s"] = time.perf_counter() - started
    _write(results, out)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main()["correctness"]["passed"] else 1)
