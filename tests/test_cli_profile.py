"""`fdconv-zoo profile`: the paper-style table, checked against parameters counted directly and torch's
FlopCounterMode on the base model."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import fdconv_zoo
from fdconv_zoo.cli import main

NARROW = ["--model-arg", "layers=[1,1,1,1]", "--model-arg", "channels=[32,64,96,128]"]
NARROW_KWARGS = dict(layers=[1, 1, 1, 1], channels=[32, 64, 96, 128])


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _rows(text: str) -> dict[str, list[str]]:
    """The table's rows (a name, then numbers only) by name."""
    cells = [line.split() for line in text.splitlines()]
    return {row[0]: row[1:] for row in cells if len(row) > 1 and all(map(_is_number, row[1:]))}


def _profile(caplog, argv: list[str]) -> str:
    caplog.set_level(logging.INFO, logger="fdconv_zoo")
    caplog.clear()
    assert main(["profile", *argv]) == 0
    return caplog.text


def test_profile_table_columns_and_values(caplog):
    text = _profile(caplog, ["resnet18_fdconv", "--input-size", "3", "48", "40", "--batch", "2", *NARROW])
    assert "input 3x48x40, batch 2" in text
    assert "model" in text and "params (M)" in text and "GFLOPs" in text and "GMACs" in text
    assert "eval ms" not in text  # only with --time
    rows = _rows(text)
    base = timm.create_model("resnet18", **NARROW_KWARGS).eval()
    fdconv = timm.create_model("resnet18_fdconv", **NARROW_KWARGS)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        base(torch.zeros(2, 3, 48, 40))
    fd_flops = fdconv_zoo.count_flops(fdconv, (3, 48, 40), batch_size=2)
    n_base, n_fd = fdconv_zoo.count_parameters(base), fdconv_zoo.count_parameters(fdconv)
    assert rows["resnet18"] == [
        f"{n_base / 1e6:.2f}",
        f"{counter.get_total_flops() / 1e9:.3f}",
        f"{counter.get_total_flops() / 2e9:.3f}",
    ]
    assert rows["resnet18_fdconv"] == [f"{n_fd / 1e6:.2f}", f"{fd_flops.gflops:.3f}", f"{fd_flops.gmacs:.3f}"]
    assert rows["difference"][0] == f"{(n_fd - n_base) / 1e6:+.2f}"
    assert rows["difference"][1] == f"{fd_flops.gflops - counter.get_total_flops() / 1e9:+.3f}"
    assert "resnet18_fdconv GFLOPs by part:" in text
    for label in (
        "FDW weight generation",
        "KSM attentions",
        "FBM band split",
        "the convolution itself",
        "the rest of the model",
    ):
        assert label in text


def test_profile_time_adds_a_latency_column(caplog):
    text = _profile(caplog, ["resnet18_fdconv", "--input-size", "3", "32", "32", "--time", "--repeats", "2", *NARROW])
    assert "eval ms" in text and "median wall time of one forward over 2 repeats" in text
    rows = _rows(text)
    assert len(rows["resnet18"]) == len(rows["resnet18_fdconv"]) == len(rows["difference"]) == 4
    assert float(rows["resnet18"][3]) > 0 and float(rows["resnet18_fdconv"][3]) > 0


def test_profile_default_input_size_is_the_models(caplog):
    text = _profile(caplog, ["resnet18_fdconv.tv_in1k", *NARROW])
    assert "input 3x224x224, batch 1" in text and "resnet18.tv_in1k" in text


@pytest.mark.parametrize("model", ["resnet18", "nonexistent_fdconv"])
def test_profile_refuses_a_model_without_an_fdconv_base(model, capsys):
    assert main(["profile", model]) == 2
    err = capsys.readouterr().err
    assert f"{model!r} is not a timm FDConv model" in err and "resnet50_fdconv" in err


def test_profile_input_size_needs_three_numbers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "resnet18_fdconv", "--input-size", "32", "32"])
    assert exit_info.value.code == 2 and "--input-size" in capsys.readouterr().err
