"""``finetune_instance_segmentation`` and ``fdconv-zoo finetune-instance-segmentation`` end to end on generated
COCO folders with polygon and RLE masks.

A short run must reach a clearly positive COCO mask AP (torchmetrics on faster-coco-eval; the untrained model
scores about 0.16 on these images, the run about 0.68), save a folder that transformers reloads and
post-processes into instance masks, and resume from its checkpoints; bad input must end the command with one
line and exit code 2.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from detection_testing import NAMES, tiny_checkpoint
from instance_testing import TINY_MASK2FORMER, edit_annotation, write_instance_folder
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

from fdconv_zoo import FDConv
from fdconv_zoo.cli import main
from fdconv_zoo.finetune.errors import FinetuneInputError
from fdconv_zoo.finetune.instance_segmentation import finetune_instance_segmentation

RUN = dict(epochs=20, batch_size=8, learning_rate=2e-3, image_size=64, model_config=TINY_MASK2FORMER)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, checkpoint):
    """One short run shared by the tests below: 32 generated 128 px images at 64 px, 80 steps."""
    root = tmp_path_factory.mktemp("instance")
    data = write_instance_folder(root / "data", n_train=32, n_val=8)
    return root, finetune_instance_segmentation(checkpoint, data, root / "run", **RUN)


def test_short_run_learns_and_saves_a_folder_transformers_reloads(trained):
    root, result = trained
    assert result.metrics["segm_map"] > 0.4 and result.metrics["segm_map_50"] > 0.6
    assert result.metrics["bbox_map"] > 0 and set(result.per_class_map) == set(NAMES)
    saved = root / "run" / "model"
    metrics = json.loads((saved / "metrics.json").read_text())
    assert metrics["segm_map"] == pytest.approx(result.metrics["segm_map"])
    assert metrics["per_class_segm_map"] == pytest.approx(result.per_class_map)
    card = (saved / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and f"| segm_map | {result.metrics['segm_map']:.4f} |" in card

    model = AutoModelForUniversalSegmentation.from_pretrained(saved).eval()
    processor = AutoImageProcessor.from_pretrained(saved)
    assert processor.do_normalize and processor.size == {"height": 64, "width": 64}
    assert model.config.id2label == dict(enumerate(NAMES))
    assert any(isinstance(m, FDConv) and m.use_fdconv for m in model.modules())
    image = Image.open(root / "data" / "valid" / "img1.png")
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs, expected = model(**inputs), result.model.eval()(**inputs)
    torch.testing.assert_close(outputs.masks_queries_logits, expected.masks_queries_logits, rtol=0, atol=1e-5)
    (instances,) = processor.post_process_instance_segmentation(
        outputs, threshold=0.5, target_sizes=[image.size[::-1]], return_binary_maps=True
    )
    assert instances["segments_info"] and instances["segmentation"].shape[-2:] == image.size[::-1]


def test_rerun_resumes_from_the_checkpoint_and_refuses_to_overwrite(trained, checkpoint, caplog):
    root, result = trained
    with pytest.raises(FileExistsError, match="--overwrite"):
        finetune_instance_segmentation(checkpoint, root / "data", root / "run", **RUN)
    with caplog.at_level(logging.INFO):  # the finished run left its last checkpoint: no further step
        again = finetune_instance_segmentation(checkpoint, root / "data", root / "run", overwrite=True, **RUN)
    assert "resuming from the last checkpoint" in caplog.text
    assert again.metrics["segm_map"] == pytest.approx(result.metrics["segm_map"], abs=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(segmentation=None), "annotation 1 has no 'segmentation'"),
        (dict(segmentation={"size": [64, 64], "counts": "PPYo1"}), "has a mask of size [64, 64]"),
        (dict(segmentation={"size": [128, 128], "counts": [5, 7]}), "annotation 1 has a broken RLE mask"),
        (dict(segmentation=[[1, 2, 3]]), "annotation 1 has a broken polygon segmentation"),
    ],
)
def test_cli_bad_masks_are_one_line_and_exit_2(tmp_path, checkpoint, capsys, changes, message):
    data = write_instance_folder(tmp_path / "data", n_train=2, n_val=1)
    edit_annotation(data, "train", 0, **changes)
    command = ["finetune-instance-segmentation", "--model", checkpoint, "--dataset", str(data)]
    assert main([*command, "--output-dir", str(tmp_path / "o")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("fdconv-zoo finetune-instance-segmentation: error: ") and message in line, line
    assert "_annotations.coco.json" in line and not (tmp_path / "o" / "model").exists()


def test_cli_bad_options_are_one_line_and_exit_2(tmp_path, checkpoint, capsys):
    data = write_instance_folder(tmp_path / "data", n_train=2, n_val=1)
    command = ["finetune-instance-segmentation", "--dataset", str(data), "--output-dir", str(tmp_path / "o")]
    for args, message in (
        (["--model", "resnet18_fdcnv"], "unknown timm model 'resnet18_fdcnv'"),
        (["--model", checkpoint, "--model-arg", "num_querys=3"], "Mask2FormerConfig has no field num_querys"),
    ):
        assert main([*command, *args]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert message in line, line


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be a positive integer, got 0"),
        ("image_size", -32, "image_size must be a positive integer (pixels), got -32"),
        ("frozen_stages", True, "frozen_stages must be one of -1, 0, 1, 2, 3, 4"),
    ],
)
def test_python_api_refuses_bad_numbers_before_any_work(tmp_path, keyword, value, message):
    with pytest.raises(FinetuneInputError, match=re.escape(message)):
        finetune_instance_segmentation("resnet18_fdconv", tmp_path / "no-data", tmp_path / "out", **{keyword: value})
    assert not (tmp_path / "out").exists()
