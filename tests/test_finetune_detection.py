"""``finetune_detection`` and ``fdconv-zoo finetune-detection`` end to end on generated COCO folders.

A short run must reach a COCO mAP above zero (torchmetrics on faster-coco-eval), save a folder that
transformers reloads into working detections, and resume from its checkpoints; bad input must end the
command with one line and exit code 2.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from detection_testing import NAMES, TINY_DETECTOR, tiny_checkpoint, write_coco_folder
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForObjectDetection

from fdconv_zoo import FDConv
from fdconv_zoo.cli import main
from fdconv_zoo.finetune.detection import finetune_detection
from fdconv_zoo.finetune.errors import FinetuneInputError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, checkpoint):
    """One short run shared by the tests below: 32 generated 128 px images, 80 steps."""
    root = tmp_path_factory.mktemp("detection")
    data = write_coco_folder(root / "data", n_train=32, n_val=8)
    result = finetune_detection(
        checkpoint,
        data,
        root / "run",
        epochs=20,
        batch_size=8,
        learning_rate=2e-3,
        image_size=128,
        detector_config=TINY_DETECTOR,
    )
    return root, result


def test_short_run_learns_and_saves_a_folder_transformers_reloads(trained):
    root, result = trained
    assert result.metrics["map"] > 0 and result.metrics["map_50"] > 0
    assert set(result.per_class_map) <= set(NAMES)
    saved = root / "run" / "model"
    metrics = json.loads((saved / "metrics.json").read_text())
    assert metrics["map"] == pytest.approx(result.metrics["map"])
    assert metrics["per_class_map"] == pytest.approx(result.per_class_map)
    card = (saved / "README.md").read_text()
    assert "pipeline_tag: object-detection" in card and f"| map | {result.metrics['map']:.4f} |" in card

    model = AutoModelForObjectDetection.from_pretrained(saved).eval()
    processor = AutoImageProcessor.from_pretrained(saved)
    assert processor.do_normalize and processor.size == {"height": 128, "width": 128}
    assert model.config.id2label == dict(enumerate(NAMES))
    assert any(isinstance(m, FDConv) and m.use_fdconv for m in model.modules())
    image = Image.open(root / "data" / "valid" / "img1.png")
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
        expected = result.model.eval()(**processor(images=image, return_tensors="pt"))
    torch.testing.assert_close(outputs.logits, expected.logits, rtol=0, atol=1e-5)
    detections = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[image.size[::-1]])[0]
    assert detections["boxes"].shape[-1] == 4 and len(detections["scores"]) > 0


def test_rerun_resumes_from_the_checkpoint_and_refuses_to_overwrite(trained, checkpoint, caplog):
    root, result = trained
    with pytest.raises(FileExistsError, match="--overwrite"):
        finetune_detection(checkpoint, root / "data", root / "run", image_size=128, detector_config=TINY_DETECTOR)
    # The finished run left its last checkpoint: asked for the same epochs, the rerun trains no further step.
    (kept,) = (root / "run" / "checkpoints").glob("checkpoint-*")
    state = json.loads((kept / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"]
    with caplog.at_level(logging.INFO):
        again = finetune_detection(
            checkpoint,
            root / "data",
            root / "run",
            epochs=20,
            batch_size=8,
            learning_rate=2e-3,
            image_size=128,
            detector_config=TINY_DETECTOR,
            overwrite=True,
        )
    assert "resuming from the last checkpoint" in caplog.text
    assert again.metrics["map"] == pytest.approx(result.metrics["map"], abs=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet18_fdcnv"], "unknown timm model 'resnet18_fdcnv'"),
        (["--detector-arg", "num_querys=3"], "has no field num_querys"),
        (["--id2label", "{not json"], "--id2label is not a JSON file or object"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, checkpoint, capsys, args, message):
    data = write_coco_folder(tmp_path / "data", n_train=2, n_val=1)
    base = ["finetune-detection", "--model", checkpoint, "--dataset", str(data), "--output-dir", str(tmp_path / "o")]
    assert main([*base, *args]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("fdconv-zoo finetune-detection: error: ") and message in line, line
    assert not (tmp_path / "o" / "model").exists()


def test_cli_bad_dataset_and_numbers(tmp_path, checkpoint, capsys):
    data = write_coco_folder(tmp_path / "data", n_train=2, n_val=1)
    (data / "train" / "img1.png").unlink()
    base = ["finetune-detection", "--model", checkpoint, "--output-dir", str(tmp_path / "o")]
    assert main([*base, "--dataset", str(data)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "img1.png' (id 2) is missing" in line
    for bad in (["--batch-size", "0"], ["--detector-arg", "num_queries"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*base, "--dataset", str(data), *bad])
        assert exit_info.value.code == 2 and "error: argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be a positive integer, got 0"),
        ("batch_size", 2.5, "batch_size must be a positive integer, got 2.5"),
        ("epochs", -1, "epochs must be a positive number, got -1"),
        ("learning_rate", float("nan"), "learning_rate must be a positive number, got nan"),
        ("image_size", 0, "image_size must be a positive integer (pixels), got 0"),
        ("backbone_lr_scale", 0.0, "backbone_lr_scale must be a positive number"),
        ("frozen_stages", 7, "frozen_stages must be one of -1, 0, 1, 2, 3, 4"),
    ],
)
def test_python_api_refuses_bad_numbers_before_any_work(tmp_path, keyword, value, message):
    """What the command line's argument types refuse, the Python API refuses too, before reading the data (the
    dataset path does not even exist) or creating the output folder."""
    with pytest.raises(FinetuneInputError, match=re.escape(message)):
        finetune_detection("resnet18_fdconv", tmp_path / "no-data", tmp_path / "out", **{keyword: value})
    assert not (tmp_path / "out").exists()
