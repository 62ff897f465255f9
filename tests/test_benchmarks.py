"""The benchmark scripts (benchmarks/) run end to end on tiny settings, and their helpers measure what they claim.

They are not part of the package, so they are loaded from their files. The official layer is not shipped: its
column is exercised with a stand-in file that imports what the official file imports (mmcv, matplotlib, timm's
old ``timm.models.layers``) and prints a line per layer, as the official file does.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

import fdconv_zoo.layers.fdconv as fdconv_module
from fdconv_zoo import FDConv
from fdconv_zoo.layers import plan_execution

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY_RESNET = json.dumps({"layers": [1, 1, 1, 1], "channels": [32, 64, 96, 128], "num_classes": 10})

FAKE_OFFICIAL = """
import matplotlib.pyplot as plt
from mmcv.cnn import CONV_LAYERS
from timm.models.layers import trunc_normal_
from fdconv_zoo import FDConv as _FDConv

@CONV_LAYERS.register_module()
class FDConv(_FDConv):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        print("*** kernel_num:", kwargs.get("kernel_num"))
"""


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_layer():
    return _load("bench_layer")


@pytest.fixture(scope="module")
def bench_models():
    return _load("bench_models")


@pytest.fixture(scope="module")
def common(bench_layer):
    return sys.modules["_common"]


@pytest.fixture(autouse=True)
def _restore_threads():
    """The scripts set torch's thread count for the whole process; give it back to the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {first_cell}")
    ]


def test_layer_quick_with_official_column(bench_layer, tmp_path, capsys):
    official = tmp_path / "FDConv.py"
    official.write_text(FAKE_OFFICIAL)
    plot = tmp_path / "layer.png"
    out = bench_layer.main(
        [
            "--quick",
            "--threads",
            "1",
            "--shapes",
            "32x8",
            "--official",
            str(official),
            "--markdown",
            "--plot",
            str(plot),
        ]
    )
    text = capsys.readouterr().out
    assert "*** kernel_num" not in text  # the official file's prints do not end up in the tables
    assert "mmcv" not in sys.modules and "mmcv.cnn" not in sys.modules  # the stand-ins are gone again
    assert f"torch {torch.__version__}" in text and "threads" in text  # the header names the machine
    assert out["max_rel_diff"] == 0.0  # the stand-in is FDConv itself, loaded with FDConv's state dict
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for mode in ("eval", "train"):
        t = out["times"][(mode, "C=32 8x8", "eager")]
        assert set(t) == {"nn.Conv2d", "FDConv", "official", "CondConv2d"} and all(v > 0 for v in t.values())
    rows = _table_rows(text, "C=32 8x8")
    assert len(rows) == 3  # eval, train, memory
    # columns: shape, conv, FDConv, official, CondConv2d, FDConv/conv, official/FDConv, CondConv2d/conv
    eval_row = rows[0]
    t = out["times"][("eval", "C=32 8x8", "eager")]
    assert eval_row[5] == f"{t['FDConv'] / t['nn.Conv2d']:.2f}x"
    assert eval_row[6] == f"{t['official'] / t['FDConv']:.2f}x"
    mem = out["memory"]["C=32 8x8"]
    # a training step holds at least the input's gradient and the output (2 x 2*32*8*8 floats)
    assert all(v >= 2 * 2 * 32 * 8 * 8 * 4 / 2**20 for v in mem.values())
    assert rows[2][1:5] == [bench_layer._fmt(mem[c]) for c in ("nn.Conv2d", "FDConv", "official", "CondConv2d")]
    targets = {t.description: t for t in out["targets"]}
    speedup = targets["layer eval: speed-up over the official layer, every shape"]
    assert speedup.values == {"C=32": pytest.approx(t["official"] / t["FDConv"])}
    assert speedup.line() in text
    # the plot is not overwritten without --overwrite, and that is refused before anything is measured
    with pytest.raises(SystemExit):
        bench_layer.main(["--quick", "--shapes", "32x8", "--plot", str(plot)])
    assert "--overwrite" in capsys.readouterr().err


def test_layer_channels_last_rows(bench_layer, capsys):
    argv = [
        "--threads",
        "1",
        "--shapes",
        "32x8",
        "--batch",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--no-memory",
        "--markdown",
    ]
    out = bench_layer.main(argv)
    rows = _table_rows(capsys.readouterr().out, "C=32 8x8 channels_last")
    assert len(rows) == 2  # eval and train
    for mode, row in zip(("eval", "train"), rows):
        conv_ms = out["times"][(mode, "C=32 8x8", "channels_last")]["nn.Conv2d"]
        assert conv_ms > 0 and row[1] == bench_layer._fmt(conv_ms)
    assert "not measured" in out["targets"][-1].line()  # no --official: its targets are not claimed


def test_layer_official_missing_path_is_a_clear_error(bench_layer, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "FDConv.py"
    with pytest.raises(SystemExit) as exc:
        bench_layer.main(["--quick", "--official", str(missing)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such file" in err and "mmdet_custom/FDConv.py" in err


def test_layer_official_file_without_the_class(bench_layer, tmp_path, capsys):
    wrong = tmp_path / "FDConv.py"
    wrong.write_text("import torch\n")
    with pytest.raises(SystemExit):
        bench_layer.main(["--quick", "--official", str(wrong)])
    assert "defines no FDConv module class" in capsys.readouterr().err


def test_models_quick_tiny_pair(bench_models, tmp_path, capsys):
    plot = tmp_path / "models.png"
    argv = ["--quick", "--threads", "1", "--models", "resnet18", "convnext_atto", "--model-kwargs", TINY_RESNET]
    out = bench_models.main([*argv, "--markdown", "--plot", str(plot)])
    text = capsys.readouterr().out
    r = out["results"][("resnet18", "eager")]
    assert "convnext_atto" not in text  # --quick: the first model only, batch 2, 64x64
    assert "batch 2, 64x64" in text
    rows = _table_rows(text, "resnet18")
    assert len(rows) == 1
    for mode, col in (("eval", 3), ("train", 5)):
        assert rows[0][col] == f"{r[mode]['resnet18_fdconv'] / r[mode]['resnet18']:.2f}x"
    mem = out["memory"]["resnet18"]
    assert rows[0][7] == f"{mem['resnet18_fdconv'] / mem['resnet18']:.2f}x"
    base_params, fd_params = out["params"]["resnet18"]
    assert fd_params > base_params > 0.1  # FDConv adds attention parameters
    assert "include resnet50 in --models" in text  # no resnet50: the targets say they were not measured
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_models_bad_arguments(bench_models, capsys):
    with pytest.raises(SystemExit):
        bench_models.main(["--models", "vgg11"])
    assert "no FDConv variant for vgg11" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_models.main(["--model-kwargs", "[1]"])
    assert "JSON object" in capsys.readouterr().err


def test_peak_memory_counts_simultaneously_live_tensors(common):
    def step():
        a = torch.empty(2**18)  # 1 MiB
        b = torch.empty(2**19)  # 2 MiB, while a is alive: 3 MiB peak
        del a, b
        c = torch.empty(2**19)  # 2 MiB after both are freed
        del c

    assert common.peak_memory_mib(step, torch.device("cpu")) == pytest.approx(3.0, abs=0.05)


def test_median_times_budget_and_interleaving(common):
    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.03)

    def fast():
        calls.append("fast")

    times = common.median_times({"slow": slow, "fast": fast}, torch.device("cpu"), warmup=1, repeats=10, budget_s=0.05)
    assert calls.count("slow") == 1 + 3  # one warm-up, then stops after the minimum of 3 timed runs
    assert calls.count("fast") == 1 + 10
    assert calls[2:6] == ["slow", "fast", "slow", "fast"]  # round-robin
    assert 25 < times["slow"] < 1000 and times["fast"] < 25


def test_ratio_range_pairs_times_within_rounds(common):
    # Round by round, not min over max of the lists: a machine slowing down in round 2 moves both times.
    assert common.ratio_range([2.0, 8.0, 3.0], [1.0, 4.0, 3.0]) == (1.0, 2.0)
    assert common.ratio_range([2.0], [1.0]) is None  # one round has no spread
    times = common.round_robin_times({"a": lambda: None, "b": lambda: None}, torch.device("cpu"), warmup=0, repeats=4)
    assert [len(t) for t in times.values()] == [4, 4]


def test_dense_ratio_cells_show_the_range_within_rounds(bench_dense):
    row = {"eval": {"fd": 3.0, "base": 2.0}, "rounds": {"eval": {"fd": [3.0, 6.0, 2.0], "base": [2.0, 3.0, 2.0]}}}
    assert bench_dense._time_ratio(row, "eval", "fd", "base") == "1.50x (1.00-2.00)"
    row["rounds"]["eval"] = {"fd": [3.0], "base": [2.0]}
    assert bench_dense._time_ratio(row, "eval", "fd", "base") == "1.50x"
    assert (
        bench_dense._time_ratio({"eval": {"fd": 3.0, "base": None}, "rounds": {}}, "eval", "fd", "base") == "-"
    )  # base failed


def test_target_lines(common):
    at_most = common.Target("eval ratio", 3.0, True, {"C=64": 2.0, "C=512": 3.5})
    assert not at_most.met and "NOT met" in at_most.line() and "C=512 3.50x" in at_most.line()
    at_least = common.Target("speed-up", 5.0, False, {"C=64": 5.0})
    assert at_least.met and ": met" in at_least.line()
    assert "not measured" in common.Target("x", 1.0, True, {}).line()
    ranged = common.Target("eval", 1.5, True, {"resnet50": 1.58}, {"resnet50": (1.49, 1.66)})
    assert ranged.line().endswith("(resnet50 1.58x, 1.49-1.66x within rounds)")


@pytest.fixture(scope="module")
def bench_dense():
    return _load("bench_dense")


def test_dense_quick_with_official_backbone(bench_dense, tmp_path, capsys):
    official = tmp_path / "FDConv.py"
    official.write_text(FAKE_OFFICIAL)
    out = bench_dense.main(["--quick", "--threads", "1", "--official", str(official), "--markdown"])
    text = capsys.readouterr().out
    assert "*** kernel_num" not in text  # the official file's prints stay out of the table
    (((setting, variant), row),) = out["rows"].items()
    assert (str(setting), variant) == ("resnet18 64x64 b2", "eager")
    for mode in ("eval", "train"):
        assert set(row[mode]) == {"resnet18", "resnet18_fdconv", "official"} and all(v > 0 for v in row[mode].values())
    assert row["official match"] < 1e-5  # the stand-in is this package's layer: the same function, layer by layer
    line = next(r for r in text.splitlines() if r.startswith("| resnet18 64x64 b2"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == f"{row['eval']['resnet18_fdconv'] / row['eval']['resnet18']:.2f}x"
    assert cells[8] == f"{row['eval']['official'] / row['eval']['resnet18_fdconv']:.2f}x"
    assert cells[6] == f"{row['memory']['resnet18_fdconv'] / row['memory']['resnet18']:.2f}x"


def test_dense_keep_weights_trades_memory_for_the_recomputation(bench_dense, capsys):
    """--keep-weights builds the FDConv model through the user-facing fdconv_cfg: its deep layers then keep their
    per-sample weights for backward, so one training step holds more memory; the base model is untouched."""
    default = bench_dense.main(["--quick", "--threads", "1"])["rows"]
    kept = bench_dense.main(["--quick", "--threads", "1", "--keep-weights", "--markdown"])["rows"]
    assert "recompute_weight=False" in capsys.readouterr().out.split("Dense-resolution benchmark.")[-1].splitlines()[0]
    (default_row,), (kept_row,) = default.values(), kept.values()
    assert kept_row["memory"]["resnet18"] == default_row["memory"]["resnet18"]
    assert kept_row["memory"]["resnet18_fdconv"] > default_row["memory"]["resnet18_fdconv"] + 1.0


def test_dense_official_layers_replace_every_fdconv_layer(bench_dense, tmp_path):
    import timm

    from fdconv_zoo import FDConv

    official = tmp_path / "FDConv.py"
    official.write_text(FAKE_OFFICIAL)
    official_cls = sys.modules["_common"].load_official_fdconv(official)
    model = timm.create_model("resnet18_fdconv", features_only=True, **json.loads(TINY_RESNET) | {"num_classes": 0})
    ours = {n: m for n, m in model.named_modules() if isinstance(m, FDConv) and m.use_fdconv}
    swapped = bench_dense.with_official_layers(
        timm.create_model("resnet18_fdconv", features_only=True, **json.loads(TINY_RESNET) | {"num_classes": 0}),
        official_cls,
    )
    assert ours and all(type(swapped.get_submodule(n)) is official_cls for n in ours)
    with pytest.raises(ValueError, match="token layout"):  # as Swin's and MiT's (nn.Linear) FDConv layers
        bench_dense.with_official_layers(torch.nn.Sequential(FDConv(32, 32, 1, token_layout=True)), official_cls)


def test_dense_settings_and_bad_arguments(bench_dense, capsys):
    setting = bench_dense.Setting.parse("resnet50:800x1333:1")
    assert (setting.height, setting.width, setting.batch, setting.classifier) == (800, 1333, 1, False)
    assert bench_dense.Setting.parse("resnet50:224x224:8:classifier").spec == "resnet50:224x224:8:classifier"
    for bad in (
        ["--settings", "resnet50:512:2"],
        ["--settings", "resnet50:512x512:0"],
        ["--settings", "vgg16:64x64:1"],
    ):
        with pytest.raises(SystemExit):
            bench_dense.main(bad)
    err = capsys.readouterr().err
    assert "MODEL:HxW:BATCH" in err and "no FDConv variant for vgg16" in err
    with pytest.raises(SystemExit, match="not among --settings"):
        bench_dense.main(["--settings", "resnet18:64x64:2", "--compile", "resnet50:512x512:2"])


@pytest.fixture(scope="module")
def profile_dense():
    return _load("profile_dense")


def test_profile_dense_times_every_part_and_restores_the_layer(profile_dense, capsys):
    parts = profile_dense.EVAL_PARTS + profile_dense._INVERSE_FFT_CALLS
    originals = {(owner, attr): getattr(owner, attr) for _, owner, attr in parts}
    ms = profile_dense.eval_attribution(profile_dense.Setting("resnet18", 64, 64, 2), repeats=1)
    for label, _, _ in profile_dense.EVAL_PARTS:  # each wrapped callable is the one the layer really calls
        assert ms[label] > 0, label
    assert ms["total"] > sum(
        v
        for k, v in ms.items()
        if k not in ("total", "base", "fdconv", profile_dense._OUTSIDE, profile_dense._REST, profile_dense.INVERSE_FFT)
    )
    assert ms["base"] > 0 and ms["fdconv"] > 0  # the untimed backbone and the base model, round-robin
    assert 0 < ms[profile_dense.INVERSE_FFT] < ms[profile_dense.EVAL_PARTS[1][0]]  # timed inside the weight images
    assert all(getattr(owner, attr) is fn for (owner, attr), fn in originals.items())
    profile_dense.main(["--setting", "resnet18:64x64:2", "--repeats", "1", "--threads", "1", "--markdown"])
    text = capsys.readouterr().out
    for label in (
        [p[0] for p in profile_dense.EVAL_PARTS]
        + [a[0] for a in profile_dense.ABLATIONS]
        + ["base", "full FDConv", "FDConv backbone, untimed, round-robin"]
    ):
        assert f"| {label}" in text, label


def test_profile_dense_budget_sets_fdconv_against_the_eval_target(profile_dense):
    ms = {label: 10.0 for label, _, _ in profile_dense.EVAL_PARTS}
    ms |= {
        profile_dense._REST: 5.0,
        profile_dense._OUTSIDE: 30.0,
        profile_dense.INVERSE_FFT: 4.0,
        "base": 100.0,
        "fdconv": 160.0,
    }
    rows = {
        label: (float(v), ratio)
        for label, v, ratio in profile_dense.eval_budget(profile_dense.Setting("resnet50", 512, 512, 2), ms)
    }
    assert rows["allowed over the base model (eval <= 1.5x)"] == (50.0, "0.50x")
    assert rows["FDConv backbone over the base model (untimed, round-robin)"] == (60.0, "0.60x")
    assert rows["FDConv's own parts (all parts but the per-sample convolution)"] == (
        55.0,
        "0.55x",
    )  # five parts and the rest
    assert rows["of which the inverse FFT (irfft2)"] == (4.0, "0.04x")
    assert rows["per-sample convolution and everything outside FDConv, over the base model"] == (-60.0, "-0.60x")
    assert profile_dense.eval_budget(profile_dense.Setting("resnet18", 64, 64, 2), ms) is None  # no target there


def test_profile_dense_training_rounds_take_the_official_backbone_and_memory(profile_dense, tmp_path):
    """Every variant gets a time and a peak training memory; --official adds the backbone with the official layers
    (here the stand-in: this package's layer) to the same rounds."""
    official = tmp_path / "FDConv.py"
    official.write_text(FAKE_OFFICIAL)
    official_cls = sys.modules["_common"].load_official_fdconv(official)
    variants = profile_dense.training_ablations(
        profile_dense.Setting("resnet18", 64, 64, 2), repeats=1, official_cls=official_cls
    )
    assert list(variants) == [
        "base",
        "full FDConv",
        *(label for label, _ in profile_dense.ABLATIONS),
        profile_dense.OFFICIAL,
    ]
    assert all(v["ms"] > 0 and v["mib"] > 0 for v in variants.values())
    # the deep layers' weights, kept for backward instead of recomputed, are the memory the default saves
    assert variants[profile_dense._KEPT]["mib"] > variants["full FDConv"]["mib"] + 1.0
    rows = profile_dense._ablation_rows(variants)
    assert [r[0] for r in rows] == list(variants)
    full = next(r for r in rows if r[0] == "full FDConv")
    assert full[-1] == f"{variants[profile_dense.OFFICIAL]['ms'] / variants['full FDConv']['ms']:.2f}x"
    assert full[-2] == f"{variants['full FDConv']['mib'] / variants['base']['mib']:.2f}x"
    assert (
        profile_dense.official_training_budget(profile_dense.Setting("resnet18", 64, 64, 2), variants) is None
    )  # no target


def test_profile_dense_budget_sets_the_training_step_against_the_official_target(profile_dense):
    variants = {
        "base": {"ms": 1000.0, "mib": 100.0},
        "full FDConv": {"ms": 2000.0, "mib": 145.0},
        profile_dense._KEPT: {"ms": 1800.0, "mib": 190.0},
        profile_dense.OFFICIAL: {"ms": 3230.0, "mib": 400.0},
    }
    setting = profile_dense.Setting("resnet50", 512, 512, 2)
    rows = {
        label: (float(ms), memory) for label, ms, memory in profile_dense.official_training_budget(setting, variants)
    }
    assert rows["official layers' training step"] == (3230.0, "4.00x")
    assert rows["allowed for the FDConv backbone (official / FDConv >= 1.7x)"] == (1900.0, "<= 1.5x")
    assert rows["full FDConv backbone over the allowance"] == (100.0, "1.45x")
    assert rows["recomputing the per-sample weights (full minus weights kept)"] == (200.0, "-")
    assert rows["weights kept, over the allowance"] == (-100.0, "1.90x")
    without_official = {k: v for k, v in variants.items() if k != profile_dense.OFFICIAL}
    assert profile_dense.official_training_budget(setting, without_official) is None


def test_profile_dense_official_needs_a_resnet_and_a_file(profile_dense, tmp_path):
    with pytest.raises(SystemExit):
        profile_dense.main(["--setting", "convnext_tiny:64x64:2", "--official", str(tmp_path / "FDConv.py")])
    with pytest.raises(SystemExit):
        profile_dense.main(["--setting", "resnet18:64x64:2", "--official", str(tmp_path / "missing.py")])


def test_profile_dense_ablations_change_every_fdconv_layer(profile_dense):
    from fdconv_zoo import FDConv

    setting = profile_dense.Setting("resnet18", 64, 64, 2)
    full = [m for m in profile_dense._fdconv_model(setting).modules() if isinstance(m, FDConv) and m.use_fdconv]
    assert any(hasattr(m, "FBM") for m in full) and all(hasattr(m, "KSM_Local") for m in full)
    changes = dict(profile_dense.ABLATIONS)
    no_fbm = profile_dense._fdconv_model(setting, changes["without FBM"])
    assert not any(hasattr(m, "FBM") for m in no_fbm.modules() if isinstance(m, FDConv))
    no_local = profile_dense._fdconv_model(setting, changes["without the local attention"])
    assert not any(hasattr(m, "KSM_Local") for m in no_local.modules() if isinstance(m, FDConv))
    kept = profile_dense._fdconv_model(setting, changes["per-sample weights kept, not recomputed"])
    assert all(m.recompute_weight is False for m in kept.modules() if isinstance(m, FDConv) and m.use_fdconv)
    with pytest.raises(SystemExit):
        profile_dense.main(["--setting", "resnet50:224x224:8:classifier"])


def test_gemm_backend_same_bands_both_ways(capsys):
    bench_gemm = _load("bench_gemm_backend")
    result = bench_gemm.main(["--shapes", "1x8x16x16", "2x4x12x20", "--repeats", "1", "--threads", "1", "--markdown"])
    assert set(result["shapes"]) == {"1x8x16x16", "2x4x12x20"}
    for entry in result["shapes"].values():
        assert 0 <= entry["max_difference"] < 1e-5 and all(ms > 0 for ms in entry["ms"])
    rows = _table_rows(capsys.readouterr().out, "all layers")
    assert len(rows) == 1 and rows[0][1] == "2"


@pytest.mark.parametrize("convolution", [False, True])
def test_gemm_backend_switch_reaches_the_planner(convolution):
    bench_gemm = _load("bench_gemm_backend")
    layer = FDConv(8, 8, 3, padding=1)
    x = torch.randn(1, 8, 8, 8)
    with bench_gemm.band_gemms_as(convolution):
        assert fdconv_module.plan_execution(layer, x).convolution_band_gemms is convolution
    assert fdconv_module.plan_execution is plan_execution  # the switch is undone


def test_gemm_backend_backbone_rows(capsys):
    bench_gemm = _load("bench_gemm_backend")
    out = bench_gemm.main(
        ["--shapes", "1x8x16x16", "--repeats", "1", "--threads", "1", "--backbone", "resnet18:64x64:2", "--markdown"]
    )
    assert fdconv_module.plan_execution is plan_execution
    assert set(out["backbone"]) == {"eval", "train"}
    for times in out["backbone"].values():
        assert set(times) == {"base", "matmul", "conv"} and all(v > 0 for v in times.values())
    line = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| train"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    train = out["backbone"]["train"]
    assert (
        cells[3] == f"{train['conv'] / train['matmul']:.2f}x" and cells[4] == f"{train['matmul'] / train['base']:.2f}x"
    )
