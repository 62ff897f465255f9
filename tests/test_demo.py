"""`fdconv-zoo demo`: a plain checkpoint converted exactly, then the whole demo on tiny settings."""

from __future__ import annotations

import logging
import re

import pytest
import timm
import torch
from fdconv_testing import randomize_norms

import fdconv_zoo
from fdconv_zoo.cli import main
from fdconv_zoo.demo import DEMO_MODEL_KWARGS, check_converted, convert_plain_checkpoint, held_out_digits


def test_a_plain_checkpoint_converts_to_the_same_function(tmp_path):
    torch.manual_seed(0)
    with torch.no_grad():
        plain = randomize_norms(timm.create_model("resnet18", num_classes=10, **DEMO_MODEL_KWARGS)).eval()
    fdconv_zoo.save_fdconv_for_hf(plain, tmp_path)
    converted = convert_plain_checkpoint(tmp_path / "model.safetensors", num_classes=10)
    assert sum(isinstance(m, fdconv_zoo.FDConv) and m.use_fdconv for m in converted.modules()) == 8  # every block conv
    images, labels = held_out_digits(plain)
    assert images.shape == (360, 3, 32, 32)
    check = check_converted(plain, converted, images, labels)
    assert check.differing_predictions == 0 and check.fdconv_accuracy == check.plain_accuracy
    assert check.max_logit_difference <= 1e-5 * check.max_abs_logit
    with torch.no_grad():  # and the check itself measures the logits
        assert check.max_logit_difference == (converted(images) - plain(images)).abs().max().item()


@pytest.mark.slow
def test_demo_runs_end_to_end_on_tiny_settings(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fdconv_zoo")
    assert main(["demo", "--pretrain-epochs", "0.3", "--epochs", "0.05", "--output-dir", str(tmp_path)]) == 0
    text = caplog.text
    for line in (
        "held-out accuracy of the plain model (360 images)",
        "held-out accuracy of the converted FDConv model, before fine-tuning",
        "held-out accuracy of the FDConv model after fine-tuning",
        "held-out accuracy of the plain model after the same fine-tuning",
        "largest |FDConv logit - plain logit|",
        "params (M)",
        "eval ms",
        "largest relative difference of onnxruntime to PyTorch",
    ):
        assert line in text
    assert re.search(r"\s0\s+held-out images on which the two models predict different classes", text)
    (run_dir,) = tmp_path.iterdir()
    assert {p.name for p in run_dir.iterdir()} == {
        "pretrained-resnet18",
        "resnet18_fdconv",
        "resnet18",
        "figures",
        "resnet18_fdconv.onnx",
    }
    fine_tuned = timm.create_model(f"local-dir:{run_dir / 'resnet18_fdconv' / 'model'}", pretrained=True)
    assert any(isinstance(m, fdconv_zoo.FDConv) for m in fine_tuned.modules())
