"""Timing, memory, table and plotting helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "OFFICIAL_HINT",
    "Target",
    "check_plot_path",
    "format_ms",
    "format_pair",
    "format_table",
    "load_official_fdconv",
    "machine_description",
    "median_times",
    "medians",
    "peak_memory_mib",
    "quiet",
    "ratio_range",
    "round_robin_times",
    "save_figure",
    "sync",
]

logger = logging.getLogger("fdconv_bench")

_ALLOCATOR_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
)

OFFICIAL_HINT = (
    "pass the path to your own copy of the official layer, FDConv_detection/mmdet_custom/FDConv.py from "
    "https://github.com/Linwei-Chen/FDConv (the project does not ship it)"
)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall time covers the computation and not only its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin_times(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    warmup: int = 2,
    repeats: int = 10,
    budget_s: float = float("inf"),
    min_repeats: int = 3,
) -> dict[str, list[float]]:
    """Wall times (ms) of each function, one per round, measured round-robin in this process.

    Interleaving the candidates spreads background load on a shared machine evenly over them, so their ratios
    stay meaningful when absolute times drift. Each function gets ``warmup`` untimed runs, then up to
    ``repeats`` timed runs; one whose timed runs add up to more than ``budget_s`` stops early, after at least
    ``min(min_repeats, repeats)`` runs (a 3-second training step need not run ten times). A function that stops
    stays stopped, so entry ``i`` of every list is from round ``i``.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    floor = min(min_repeats, repeats)
    for _ in range(repeats):
        active = [n for n in fns if not (len(times[n]) >= floor and sum(times[n]) > budget_s * 1e3)]
        if not active:
            break
        for name in active:
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """The median of each function's times (from :func:`round_robin_times`)."""
    return {name: statistics.median(t) for name, t in times.items()}


def median_times(
    fns: dict[str, Callable[[], object]], device: torch.device, *args: object, **kwargs: object
) -> dict[str, float]:
    """Median of :func:`round_robin_times` (same arguments) for each function."""
    return medians(round_robin_times(fns, device, *args, **kwargs))


def ratio_range(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float] | None:
    """Smallest and largest ratio of two functions' times within one round (None with fewer than two rounds).

    Both ran back to back in each round, so these ratios hold while the machine's speed drifts between rounds;
    their spread shows how far one run of the table can move a ratio."""
    ratios = [n / d for n, d in zip(numerator, denominator) if d > 0]
    return (min(ratios), max(ratios)) if len(ratios) > 1 else None


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory (MiB) that tensors allocated while ``fn`` ran, above what was allocated before it.

    On CUDA this is ``torch.cuda.max_memory_allocated``; on the CPU the same quantity is rebuilt from the
    allocation events of ``torch.profiler`` (tensor memory through the CPU allocator, not the resident set, so
    it does not depend on what glibc keeps mapped). Zero gradients (``set_to_none``) before calling ``fn`` so
    that freeing the previous step's gradients does not count.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu or cuda, not {device.type}; pass --no-memory")
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    current = peak = 0
    for _, size in sorted(events):
        current += size
        peak = max(peak, current)
    return peak / 2**20


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence stdout and Python warnings (the official layer prints a line per layer it builds)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def load_official_fdconv(path: str | Path) -> type:
    """The ``FDConv`` class of the user's own copy of the official ``FDConv.py`` (the project does not ship it).

    The file imports mmcv (only to register the class with mmdet/mmseg), matplotlib (for a disabled debug plot)
    and ``timm.models.layers``; none of them is used by the layer, so whichever is not importable here is
    replaced by a stand-in while the file loads (mmcv always is: importing a real mmcv is slow and often broken
    against a newer torch). ``sys.modules`` is restored afterwards.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--official {path}: no such file; {OFFICIAL_HINT}")
    registry = types.SimpleNamespace(register_module=lambda *a, **k: lambda cls: cls)
    stubs: dict[str, object] = {
        "mmcv": types.ModuleType("mmcv"),
        "mmcv.cnn": types.SimpleNamespace(CONV_LAYERS=registry),
    }
    if importlib.util.find_spec("matplotlib") is None:
        stubs["matplotlib"] = types.ModuleType("matplotlib")
        stubs["matplotlib.pyplot"] = types.ModuleType("matplotlib.pyplot")
    try:
        with warnings.catch_warnings():  # timm's deprecated-import FutureWarning
            warnings.simplefilter("ignore")
            importlib.import_module("timm.models.layers")
    except ImportError:
        stubs["timm.models.layers"] = types.SimpleNamespace(trunc_normal_=torch.nn.init.trunc_normal_)
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)  # type: ignore[arg-type]
    try:
        spec = importlib.util.spec_from_file_location("official_fdconv", path)
        module = importlib.util.module_from_spec(spec)
        with quiet():
            spec.loader.exec_module(module)
    except Exception as exc:
        raise RuntimeError(
            f"--official {path}: could not import it ({type(exc).__name__}: {exc}); {OFFICIAL_HINT}"
        ) from exc
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    cls = getattr(module, "FDConv", None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise RuntimeError(f"--official {path}: defines no FDConv module class; {OFFICIAL_HINT}")
    return cls


def machine_description(device: torch.device, threads: int) -> str:
    """One line naming the hardware and software the numbers were measured on."""
    if device.type == "cuda":
        hardware = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        # The vector ISA torch dispatches to: it decides which CPU backend wins (bench_gemm_backend.py).
        hardware = f"{cpu} ({torch.backends.cpu.get_cpu_capability()}), {threads} of {os.cpu_count()} threads"
    import fdconv_zoo

    version = fdconv_zoo.__version__
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        if commit:
            version += f" @ {commit}"
    # The memory allocator's settings (glibc's, or a preloaded one) move CPU timings by tens of percent: name them.
    allocator = ", ".join(f"{name}={os.environ[name]}" for name in _ALLOCATOR_VARIABLES if name in os.environ)
    allocator = f"; {allocator}" if allocator else ""
    return f"{hardware}; torch {torch.__version__}; fdconv-zoo {version}; Python {platform.python_version()}{allocator}"


def format_ms(v: float | None) -> str:
    """A table cell for a measured value (ms or MiB) with about three significant digits; None (the variant
    failed) reads "fails"."""
    return "fails" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def format_pair(base: float | None, other: float | None) -> str:
    """A "base / other" cell."""
    return f"{format_ms(base)} / {format_ms(other)}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = True) -> str:
    """A GitHub Markdown table (pastes into the README as is), or aligned plain text.

    The first column is left-aligned, the others (numbers) right-aligned.
    """
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str], sep: str) -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return (f"{sep} " + f" {sep} ".join(parts) + f" {sep}") if markdown else "  ".join(parts)

    if markdown:
        rule = "|" + "|".join(("-" * (w + 1) + ":") if i else (":" + "-" * (w + 1)) for i, w in enumerate(widths)) + "|"
    else:
        rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0], "|"), rule, *(line(r, "|") for r in cells[1:])])


@dataclass
class Target:
    """One performance target of the project, checked against measured values (one per shape or model)."""

    description: str
    limit: float
    at_most: bool  # True: every value must be <= limit; False: >= limit
    values: dict[str, float]
    ranges: dict[str, tuple[float, float] | None] = field(default_factory=dict)  # per value: its ratio_range

    @property
    def met(self) -> bool:
        return bool(self.values) and all(
            (v <= self.limit) if self.at_most else (v >= self.limit) for v in self.values.values()
        )

    def line(self) -> str:
        if not self.values:
            return f"{self.description}: not measured"
        op = "<=" if self.at_most else ">="
        measured = ", ".join(f"{k} {v:.2f}x" + _range_text(self.ranges.get(k)) for k, v in self.values.items())
        return f"{self.description} ({op} {self.limit:g}x): {'met' if self.met else 'NOT met'} ({measured})"


def _range_text(spread: tuple[float, float] | None) -> str:
    return "" if spread is None else f", {spread[0]:.2f}-{spread[1]:.2f}x within rounds"


def check_plot_path(path: Path | None, overwrite: bool) -> None:
    """Fail before measuring (not after minutes of it) when the plot cannot or should not be written."""
    if path is None:
        return
    if path.suffix.lower() != ".png":
        raise ValueError(f"--plot {path}: the plot is a PNG; give a path ending in .png")
    if path.exists() and not overwrite:
        raise FileExistsError(f"--plot {path} exists; pass --overwrite to replace it or choose another path")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--plot {path}: folder {path.parent} does not exist; create it first")
    if importlib.util.find_spec("matplotlib") is None:
        raise ModuleNotFoundError("--plot needs matplotlib: pip install 'fdconv-zoo[viz]' (or matplotlib)")


def save_figure(fig: object, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically (a temporary file in the same folder, then a rename)."""
    fd, tmp = tempfile.mkstemp(suffix=".png", prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=120)  # type: ignore[attr-defined]
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
