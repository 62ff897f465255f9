"""The cost benchmark (benchmarks/bench_cost.py) counts what it says it counts, and its GPU model does its arithmetic.

The scripts are not part of the package, so they are loaded from their files (as in test_benchmarks.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def op_counts():
    return _load("op_counts")


@pytest.fixture(scope="module")
def cost_model():
    return _load("gpu_cost_model")


@pytest.fixture(scope="module")
def bench_cost(op_counts, cost_model):
    return _load("bench_cost")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_conv_bn_relu_eval_is_three_kernels_views_are_free_item_is_a_sync(op_counts):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        with op_counts.OpCostMode() as mode:
            y = block(x)
        assert mode.total.kernels == 3 and mode.total.host_syncs == 0
        assert [r.name for r in mode.records] == ["aten.convolution", "aten.native_batch_norm", "aten.relu"]
        with op_counts.OpCostMode() as mode:
            y.view(-1)[:5].unsqueeze(0).expand(3, 5).transpose(0, 1)
        assert mode.total.ops == 0  # views, slices, unsqueeze, expand, transpose only make new metadata
        with op_counts.OpCostMode() as mode:
            y.transpose(1, 2).reshape(2, 16, -1)  # cannot be a view: a copy (clone) and its metadata (_unsafe_view)
        assert (mode.total.ops, mode.total.kernels) == (2, 1) and mode.records[0].name == "aten.clone"
        with op_counts.OpCostMode() as mode:
            y.sum().item()
        assert mode.total.kernels == 2 and mode.total.host_syncs == 1
        assert mode.sync_ops == {"aten._local_scalar_dense.default": 1}


def test_boolean_masks_synchronise_integer_indices_do_not(op_counts):
    x = torch.randn(6, 4)
    with op_counts.OpCostMode() as mode:
        x[torch.tensor([0, 2])]
        x[x > 0] = 0.0
    assert mode.total.host_syncs == 1 and set(mode.sync_ops) == {"aten.index_put_.default"}
    with op_counts.OpCostMode() as mode:
        x[x[:, 0] > 0]
        torch.nonzero(x)
    assert mode.total.host_syncs == 2


def test_bytes_and_flops_of_known_ops(op_counts):
    a, b = torch.randn(4, 8), torch.randn(8)
    with op_counts.OpCostMode() as mode:
        torch.add(a, b.expand(4, 8))  # the expanded operand addresses its 8 elements, not 32
    assert mode.total.bytes == (32 + 8 + 32) * 4 and mode.total.flops == 0
    m1, m2 = torch.randn(5, 7), torch.randn(7, 3)
    with op_counts.OpCostMode() as mode:
        m1.mm(m2)
    assert mode.total.flops == 2 * 5 * 7 * 3 and mode.total.bytes == (35 + 21 + 15) * 4
    acc = torch.zeros(4, 8)
    with op_counts.OpCostMode() as mode:
        acc.add_(a)
    assert mode.total.bytes == 3 * 32 * 4  # the in-place operand is read and written
    assert op_counts.tensor_bytes(torch.empty(0, 3)) == 0


def test_fft_flop_formulas_reach_flop_counter_mode(op_counts):
    x = torch.randn(2, 3, 8, 16)
    expected_r2c = round(2 * 3 * 2.5 * 128 * math.log2(128))  # six real transforms of 8 x 16 points
    with FlopCounterMode(display=False) as flops, op_counts.OpCostMode() as mode:
        spectrum = torch.fft.rfft2(x)
    assert flops.get_total_flops() == mode.total.flops == expected_r2c
    with FlopCounterMode(display=False) as flops:
        torch.fft.irfft2(spectrum, s=(8, 16))  # the real side is the output: the same count
    assert flops.get_total_flops() == expected_r2c
    with FlopCounterMode(display=False) as flops:
        torch.fft.fft(torch.randn(5, 32, dtype=torch.complex64))
    assert flops.get_total_flops() == round(5 * 5.0 * 32 * 5)
    assert op_counts.fft_flops([1], 10, True) == 0


def test_ops_are_attributed_to_the_tracked_layer_in_forward_and_backward(op_counts):
    class Branchy(nn.Module):  # several ops, one of them only on the parameter (not reached through the input)
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ (self.weight * 2).tanh()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), Branchy(), nn.ReLU())
    x = torch.randn(4, 8)
    with op_counts.OpCostMode({"1": model[1]}) as mode:
        model(x).sum().backward()
    inside = [r.name for r in mode.records if r.layer == "1"]
    assert inside[:3] == ["aten.mul", "aten.tanh", "aten.mm"]  # forward
    assert "aten.tanh_backward" in inside and inside.count("aten.mm") >= 3  # backward: grads of x and weight
    assert mode.per_layer["1"].kernels == len(inside)
    assert all(r.layer is None for r in mode.records if r.name in ("aten.addmm", "aten.threshold_backward"))


def test_cost_model_arithmetic(cost_model):
    gpu = cost_model.Gpu("test", fp32_flops=1e12, half_flops=4e12, bandwidth=1e11)
    ops = [
        cost_model.OpCost("aten.mm", 2_000_000_000, 1_000_000),
        cost_model.OpCost("aten.add", 0, 400_000_000),
        cost_model.OpCost("aten._fft_r2c", 7_000_000_000, 80_000_000),
    ]
    f, b = cost_model.FLOP_EFFICIENCY, cost_model.BANDWIDTH_EFFICIENCY
    roofline_fp32 = 2e9 / (1e12 * f) + 4e8 / (1e11 * b) + 7e9 / (1e12 * f)
    eager = cost_model.predict_seconds(ops, 5, gpu, "fp32", dispatch_s=10e-6)
    assert eager == pytest.approx(5 * 10e-6 + roofline_fp32)
    graph = cost_model.predict_seconds(ops, 5, gpu, "fp32", dispatch_s=10e-6, graph=True)
    assert graph == pytest.approx(3 * cost_model.GRAPH_OVERHEAD_S + roofline_fp32)
    # bf16: the matmul on the half-precision peak, the add's bytes halved, the FFT as in float32
    roofline_bf16 = max(2e9 / (4e12 * f), 0.5e6 / (1e11 * b)) + 2e8 / (1e11 * b) + 7e9 / (1e12 * f)
    assert cost_model.predict_seconds(ops, 0, gpu, "bf16", 0.0) == pytest.approx(roofline_bf16)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        cost_model.predict_seconds(ops, 0, gpu, "fp16", 0.0)


def test_calibration_solves_for_the_dispatch_time(cost_model):
    # 10 swapped layers take 100 -> 50 images/s: 1 ms more per layer, 0.2 ms of it roofline, over 80 extra ops
    t = cost_model.calibrate_dispatch(80, 0.2e-3, 10, base_images_per_s=100.0, other_images_per_s=50.0)
    assert t == pytest.approx(10e-6)
    with pytest.raises(ValueError, match="exceeds the measured difference"):
        cost_model.calibrate_dispatch(80, 2e-3, 10, 100.0, 50.0)
    with pytest.raises(ValueError, match="slower variant"):
        cost_model.calibrate_dispatch(80, 0.0, 10, 50.0, 100.0)


def _synthetic_results(bench_cost) -> dict:
    def model(kernels: int, syncs: int, nbytes: int, layers: int, ms: float) -> dict:
        total = {"ops": kernels + 2, "kernels": kernels, "host_syncs": syncs, "bytes": nbytes, "flops": 10**9}
        return {
            "total": total,
            "layers": layers,
            "inside_layer_mean": {k: v / max(layers, 1) for k, v in total.items()},
            "sync_ops": {"aten._local_scalar_dense.default": syncs} if syncs else {},
            "records": [("aten.mm", 1, 1)],
            "predicted_ms": {"H100 bf16 eager": ms, "H100 bf16 graph": ms / 2},
        }

    entry = {
        "base": model(100, 0, 10**9, 0, 1.0),
        "fdconv": model(1100, 0, 3 * 10**9, 50, 4.0),
        "official": model(3100, 4, 6 * 10**9, 50, 10.0),
    }
    return {
        "command": "HF_HUB_OFFLINE=1 python benchmarks/bench_cost.py --settings resnet50:512x512:2",
        "torch": torch.__version__,
        "plan": "cuda",
        "dispatch_us": 20.0,
        "graph_overhead_us": 1.5,
        "calibration": None,
        "settings": {
            "resnet50:512x512:2": {"eval": entry, "train": entry},
            # a classifier row is reported but not held to the dense targets
            "resnet18:224x224:8:classifier": {"eval": {**entry, "fdconv": model(9100, 0, 90 * 10**9, 50, 9.0)}},
        },
        "compiled": {
            "setting": "resnet18:128x128:1:classifier",
            "resnet18": {"generated": 38, "emitted": 37, "extern": 21},
            "resnet18_fdconv": {"generated": 700, "emitted": 661, "extern": 259},
            "resnet18 layers": 0,
            "resnet18_fdconv layers": 16,
        },
    }


def test_targets_table_and_files(bench_cost, tmp_path):
    results = _synthetic_results(bench_cost)
    targets = {t["target"]: t for t in bench_cost._targets(results)}
    assert targets["eval kernels per FDConv layer over the base model"]["worst"] == 20.0  # (1100 - 100) / 50, not 180
    assert targets["eval kernels per FDConv layer over the base model"]["met"] is True
    assert targets["eval bytes / base model"]["worst"] == 3.0 and targets["eval bytes / base model"]["met"] is False
    assert targets["host syncs (eval and training step)"]["worst"] == 0
    assert targets["compiled generated kernels per FDConv layer over the base model"]["worst"] == (700 - 38) / 16
    assert targets["compiled loop nests emitted per FDConv layer over the base model"]["worst"] == (661 - 37) / 16
    assert targets["predicted official / FDConv, H100 bf16 eager"]["worst"] == 2.5
    results["targets"] = list(targets.values())
    report = bench_cost.render_markdown(results)
    assert results["command"] in report
    assert "per-op account of where the bytes go" in report  # the fallback, named where bytes miss
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in report.splitlines()
        if line.startswith("| resnet50:512x512:2 ")
    ]
    cells = next(r for r in rows if r[1:3] == ["eval", "official"])
    assert cells[3:9] == ["3,100", "3,102", "4", "6,000", "6.00x", "1.0"]
    assert cells[10] == "60.0"  # (3100 - 100) / 50 kernels per layer over the base model
    prediction = next(r for r in rows if len(r) == 9 and r[1] == "eval")
    assert prediction[2:] == ["1.0", "4.0", "10.0", "4.00x", "4.00x", "2.50x", "n/a"]
    bench_cost.write_results(results, report, tmp_path / "cost")
    written = json.loads((tmp_path / "cost.json").read_text())
    assert "records" not in written["settings"]["resnet50:512x512:2"]["eval"]["base"]  # per-op lists stay out
    assert written["settings"]["resnet50:512x512:2"]["eval"]["fdconv"]["total"]["kernels"] == 1100
    assert (tmp_path / "cost.md").read_text() == report + "\n"
    assert "records" in results["settings"]["resnet50:512x512:2"]["eval"]["base"]  # the caller's dict is untouched


def test_main_end_to_end_writes_and_refuses_to_overwrite(bench_cost, tmp_path, capsys):
    argv = ["--settings", "resnet18:32x32:1", "--no-train", "--no-compile", "--dispatch-us", "10", "--threads", "1"]
    results = bench_cost.main([*argv, "--out", str(tmp_path / "cost")])
    counts = results["settings"]["resnet18:32x32:1"]["eval"]
    assert counts["base"]["layers"] == 0 and counts["fdconv"]["layers"] == 16
    assert counts["fdconv"]["total"]["kernels"] > counts["base"]["total"]["kernels"] + 16
    assert counts["fdconv"]["total"]["host_syncs"] == 0  # the CUDA plan runs without host syncs
    assert json.loads((tmp_path / "cost.json").read_text())["dispatch_us"] == 10.0
    assert "--dispatch-us 10" in (tmp_path / "cost.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        bench_cost.main([*argv, "--out", str(tmp_path / "cost")])
    assert "--overwrite" in capsys.readouterr().err


def test_official_missing_file_is_a_clear_error(bench_cost, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "FDConv.py"
    with pytest.raises(SystemExit) as exc:
        bench_cost.main(["--official", str(missing), "--no-compile"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such file" in err and "mmdet_custom/FDConv.py" in err


def test_compiled_kernel_count_without_building_them(bench_cost):
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4), nn.Sigmoid())
    counts = bench_cost.compiled_kernels(model, torch.randn(2, 16), plan="cpu")
    # Two addmm calls, each followed by one fused pointwise kernel (one loop nest each).
    assert counts == {"generated": 2, "emitted": 2, "extern": 2}


def test_gpu_check_dry_run_writes_the_machine_file(tmp_path):
    """gpu_check.sh --dry-run runs the GPU script's whole path on the CPU (the golden vectors, tiny eager cells, the
    compiled graph's kernel count)."""
    out = tmp_path / "dry.json"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "REPEATS": "1"}
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["correctness"] == {"passed": True, "failures": []}
    assert [(c["dtype"], c["execution"]) for c in results["cells"]] == [("float32", "eager"), ("bfloat16", "eager")]
    for cell in results["cells"]:
        assert "errors" not in cell, cell.get("errors")
        for key in ("eval_ms", "train_ms", "peak_train_mib"):
            assert set(cell[key]) == {"base", "fdconv"} and all(v > 0 for v in cell[key].values()), key
        assert cell["train_fdconv_over_base"] == pytest.approx(cell["train_ms"]["fdconv"] / cell["train_ms"]["base"])
    kernels = results["compiled_kernels"]  # the compiled graph's kernels, counted for the device (here the CPU)
    base, fdconv = kernels["resnet18"], kernels["resnet18_fdconv"]
    assert kernels["resnet18 layers"] == 0 and kernels["resnet18_fdconv layers"] == 8
    assert fdconv["generated"] > base["generated"] > 0 and fdconv["extern"] > base["extern"] > 0
    assert kernels["generated per FDConv layer over base"] == (fdconv["generated"] - base["generated"]) / 8
    bad = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--fast"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --fast" in bad.stderr


def test_gpu_measure_names_the_file_after_the_gpu():
    gpu_measure = _load("gpu_measure")
    assert gpu_measure.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    cells = gpu_measure.plan_cells(dry_run=False)
    assert cells[0] == (gpu_measure.Setting("resnet50", 512, 512, 2), "float32", "eager")
    assert {e for _, _, e in cells} == {"eager", gpu_measure.KERNEL_COUNT, "compiled", "reduce-overhead"}
    assert {(s.height, s.width) for s, _, e in cells if e != gpu_measure.KERNEL_COUNT} == {(512, 512), (800, 1333)}
    # The compiled graph's kernels are counted after every eager cell and before any compiled one.
    order = [e for _, _, e in cells]
    assert order.index(gpu_measure.KERNEL_COUNT) == order.count("eager")
    assert cells[order.index(gpu_measure.KERNEL_COUNT)][0] == gpu_measure.COMPILE_SETTING
