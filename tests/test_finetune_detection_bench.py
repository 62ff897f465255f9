"""benchmarks/bench_detection.py runs end to end on a tiny setting and reports what it measured (a dry run:
the numbers of a real run come from the full-size setting on a quiet machine)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_detection.py"


def test_bench_detection_quick(capsys):
    spec = importlib.util.spec_from_file_location("_bench_detection", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    result = module.main(["--quick", "--threads", "1"])
    text = capsys.readouterr().out
    for mode in ("train", "eval"):
        ms = result["ms"][mode]
        assert set(ms) == {"plain", "fdconv"} and all(v > 0 for v in ms.values())
        assert result["ratio"][mode] == ms["fdconv"] / ms["plain"]
    line = next(r for r in text.splitlines() if r.startswith("training step (s)"))
    assert line.split()[-1] == f"{result['ratio']['train']:.2f}x"
    assert "resnet18_fdconv" in text and "rt-detr-v2, 64x64, batch 2" in text
