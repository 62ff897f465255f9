"""Timing, memory and table helpers shared by the benchmark scripts."""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["format_table", "load_official_fdconv", "median_time", "peak_cuda_memory", "sync"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of ``fn`` in milliseconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_cuda_memory(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak GPU memory (MiB) allocated while running ``fn``; None on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def load_official_fdconv(path: str | Path) -> type:
    """Import the official ``FDConv.py`` (the user's own copy; not shipped) with stand-ins for its mmcv,
    matplotlib and old-timm imports, which the layer itself does not use."""
    registry = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
    stubs = {
        "mmcv": types.ModuleType("mmcv"),
        "mmcv.cnn": types.SimpleNamespace(CONV_LAYERS=registry),
        "matplotlib": types.ModuleType("matplotlib"),
        "matplotlib.pyplot": types.ModuleType("matplotlib.pyplot"),
        "timm.models.layers": types.SimpleNamespace(trunc_normal_=torch.nn.init.trunc_normal_),
    }
    for name, module in stubs.items():
        if name.startswith("matplotlib") and importlib.util.find_spec("matplotlib") is not None:
            continue
        sys.modules.setdefault(name, module)
    spec = importlib.util.spec_from_file_location("official_fdconv", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FDConv


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (pastes into the README as is)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
