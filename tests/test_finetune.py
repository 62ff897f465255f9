"""fdconv-zoo's fine-tuning entry point: HF Trainer on a datasets dataset, saved for timm and transformers."""

import json
import logging

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from PIL import Image

import fdconv_zoo  # noqa: F401
from fdconv_testing import relative_error
from fdconv_zoo.cli import main
from fdconv_zoo.finetune import finetune_classification, load_image_classification_dataset

TINY = dict(layers=(1, 1, 1, 1), channels=(32, 64, 96, 128))


def test_digits_dataset_is_built_in_and_split():
    data = load_image_classification_dataset("digits")
    assert len(data["train"]) + len(data["test"]) == 1797
    assert data["train"].features["label"].names == [str(d) for d in range(10)]
    assert data["train"][0]["image"].size == (8, 8)


def test_fdconv_finetune_learns_and_saves_a_loadable_model(tmp_path):
    from transformers import AutoModelForImageClassification

    result = finetune_classification("resnet18_fdconv", "digits", tmp_path, epochs=1, learning_rate=2e-3, image_size=32, model_kwargs=TINY)
    assert result.accuracy > 0.5  # 10 classes: chance is 0.1
    folder = result.saved_to
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet18_fdconv" and config["num_classes"] == 10
    card = ModelCard.load(folder / "README.md")
    assert "fdconv" in card.data.tags and f"{result.accuracy:.4f}" in card.text

    timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    wrapped = AutoModelForImageClassification.from_pretrained(folder).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(wrapped(pixel_values=x).logits, timm_model(x)) <= 1e-6
        assert timm_model(x).argmax(1).shape == (2,)


def test_interrupted_finetune_resumes_from_its_last_checkpoint(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    finetune_classification("resnet18", "digits", tmp_path, epochs=1, image_size=32, model_kwargs=TINY)
    first = sorted((tmp_path / "checkpoints").glob("checkpoint-*"))
    assert len(first) == 1
    steps_per_epoch = int(first[0].name.split("-")[1])
    finetune_classification("resnet18", "digits", tmp_path, epochs=2, image_size=32, model_kwargs=TINY)
    assert "resuming from the last checkpoint" in caplog.text
    state = json.loads((tmp_path / "checkpoints" / f"checkpoint-{2 * steps_per_epoch}" / "trainer_state.json").read_text())
    train_logs = [e for e in state["log_history"] if "loss" in e]
    assert [e["epoch"] for e in train_logs] == [1.0, 2.0]  # epoch 1 logged by the first run, epoch 2 by the resumed one


def test_cli_finetune_classification(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    code = main([
        "finetune-classification", "--model", "resnet18", "--dataset", "digits", "--output-dir", str(tmp_path),
        "--epochs", "1", "--image-size", "32", "--model-arg", "layers=[1,1,1,1]", "--model-arg", "channels=[32,64,96,128]",
    ])
    assert code == 0 and "accuracy" in caplog.text and (tmp_path / "model" / "model.safetensors").is_file()


def test_dataset_without_labels_names_the_fix(tmp_path):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")  # no class sub-folders: no label column
    with pytest.raises(ValueError, match=r"needs 'image' and 'label' columns, found \['image'\].*rename_column"):
        load_image_classification_dataset(str(tmp_path))


def test_unknown_model_lists_the_fdconv_models(tmp_path):
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet51_fdconv'.*resnet50_fdconv"):
        finetune_classification("resnet51_fdconv", "digits", tmp_path, epochs=1)


def test_ddp_on_two_cpu_processes_keeps_the_ranks_identical(tmp_path):
    """torchrun, 2 processes, gloo: the same entry point trains with DDP (every parameter used) and both ranks
    end with identical weights; only rank 0 writes the model folder."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", str(worker), str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and any(k.endswith("dft_weight") for k in rank0)
    differing = {k for k in rank0 if not torch.equal(rank0[k], rank1[k])}
    # Every parameter is identical. DDP broadcasts buffers from rank 0 before each forward, so only the
    # BatchNorm running statistics of the last step differ (rank 0's are the ones saved).
    assert all(k.endswith((".running_mean", ".running_var")) for k in differing)
    state = json.loads(next((tmp_path / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["global_step"] == 12  # ceil(1437 / (64 per rank x 2 ranks)): the data was split, not duplicated
    assert (tmp_path / "model" / "model.safetensors").is_file()
