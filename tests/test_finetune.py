"""fdconv-zoo's fine-tuning entry point: HF Trainer on a datasets dataset, saved for timm and transformers."""

import json
import logging

import numpy as np
import pytest
import timm
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from fdconv_testing import relative_error
from huggingface_hub import ModelCard
from PIL import Image

import fdconv_zoo  # noqa: F401
from fdconv_zoo.cli import main
from fdconv_zoo.finetune import (
    FinetuneInputError,
    finetune_classification,
    load_image_classification_dataset,
    to_model_image,
)
from fdconv_zoo.finetune.classification import _image_transforms

TINY = dict(layers=(1, 1, 1, 1), channels=(32, 64, 96, 128))


def colour_images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(n)]


def test_digits_dataset_is_built_in_and_split():
    data = load_image_classification_dataset("digits")
    assert len(data["train"]) + len(data["test"]) == 1797
    assert data["train"].features["label"].names == [str(d) for d in range(10)]
    assert data["train"][0]["image"].size == (8, 8)


def test_fdconv_finetune_learns_and_saves_a_loadable_model(tmp_path):
    from transformers import AutoModelForImageClassification

    result = finetune_classification(
        "resnet18_fdconv", "digits", tmp_path, epochs=1, learning_rate=2e-3, image_size=32, model_kwargs=TINY
    )
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
    with pytest.raises(FileExistsError, match="--overwrite"):  # the first run finished: its model is kept
        finetune_classification("resnet18", "digits", tmp_path, epochs=2, image_size=32, model_kwargs=TINY)
    finetune_classification("resnet18", "digits", tmp_path, epochs=2, image_size=32, model_kwargs=TINY, overwrite=True)
    assert "resuming from the last checkpoint" in caplog.text
    state = json.loads(
        (tmp_path / "checkpoints" / f"checkpoint-{2 * steps_per_epoch}" / "trainer_state.json").read_text()
    )
    train_logs = [e for e in state["log_history"] if "loss" in e]
    assert [e["epoch"] for e in train_logs] == [1.0, 2.0]  # epoch 1 logged by the first run, epoch 2 by the resumed one


def test_cli_finetune_classification(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    code = main(
        [
            "finetune-classification",
            "--model",
            "resnet18",
            "--dataset",
            "digits",
            "--output-dir",
            str(tmp_path),
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--model-arg",
            "layers=[1,1,1,1]",
            "--model-arg",
            "channels=[32,64,96,128]",
        ]
    )
    assert code == 0 and "accuracy" in caplog.text and (tmp_path / "model" / "model.safetensors").is_file()
    assert (
        "metric" in caplog.text and "train loss" in caplog.text and "held-out images" in caplog.text
    )  # the final table
    capsys.readouterr()
    assert (
        main(["finetune-classification", "--model", "resnet18", "--dataset", "digits", "--output-dir", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err  # before training, one line without a traceback
    assert "already holds a fine-tuned model; pass --overwrite" in err and len(err.splitlines()) == 1


def test_dataset_without_labels_names_the_fix(tmp_path):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")  # no class sub-folders: no label column
    with pytest.raises(FinetuneInputError, match=r"gives no classes \(sub-folders: none\).*one sub-folder per class"):
        load_image_classification_dataset(str(tmp_path))
    saved = tmp_path / "saved"
    Dataset.from_dict({"image": colour_images(3)}, features=Features({"image": ImageFeature()})).save_to_disk(saved)
    with pytest.raises(ValueError, match=r"needs 'image' and 'label' columns, found \['image'\].*rename_column"):
        load_image_classification_dataset(str(saved))


def test_unknown_model_lists_the_fdconv_models(tmp_path):
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet51_fdconv'.*resnet50_fdconv"):
        finetune_classification("resnet51_fdconv", "digits", tmp_path, epochs=1)


def test_unknown_pretrained_tag_lists_the_tags(tmp_path):
    with pytest.raises(
        FinetuneInputError, match=r"unknown pretrained tag 'resnet18_fdconv.in22k'.*resnet18_fdconv.tv_in1k"
    ):
        finetune_classification("resnet18_fdconv.in22k", "digits", tmp_path, epochs=1)


def test_unknown_dataset_names_the_accepted_forms(tmp_path):
    with pytest.raises(
        FinetuneInputError, match=r"cannot load dataset 'nobody/no-such-dataset'.*save_to_disk.*sub-folder per class"
    ):
        load_image_classification_dataset("nobody/no-such-dataset")


def test_labels_outside_the_classes_are_refused_before_training(tmp_path):
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    # ClassLabel checks labels when examples are encoded, not when a column is cast: 5 gets through, as does -1.
    data = Dataset.from_dict({"image": colour_images(8), "label": [0, 1, 5, 0, 1, 0, 1, -1]}).cast(features)
    data.save_to_disk(tmp_path / "data")
    with pytest.raises(
        FinetuneInputError, match=r"'train' split .* has 2 of 8 labels outside 0\.\.1 .*\[-1, 5\].*dataset\.filter"
    ):
        finetune_classification("resnet18", str(tmp_path / "data"), tmp_path / "out", model_kwargs=TINY)
    assert not (tmp_path / "out").exists()


def test_unlabelled_test_split_is_not_used_for_evaluation(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    train = Dataset.from_dict({"image": colour_images(10), "label": [0, 1] * 5}, features=features)
    test = Dataset.from_dict(
        {"image": colour_images(4), "label": [-1] * 4}, features=features
    )  # a Hub-style unlabelled test split
    DatasetDict(train=train, test=test).save_to_disk(tmp_path)
    data = load_image_classification_dataset(str(tmp_path), test_size=0.2)
    assert (len(data["train"]), len(data["test"])) == (8, 2) and "is unlabelled" in caplog.text


def test_images_of_any_mode_become_the_models_channels():
    rgb = colour_images(1)[0]
    gray = rgb.convert("L")
    assert to_model_image(rgb.convert("RGBA"), 3).tobytes() == rgb.tobytes()  # alpha dropped
    assert to_model_image(gray, 3).tobytes() == gray.convert("RGB").tobytes()  # gray repeated
    assert to_model_image(rgb.convert("P"), 3).mode == "RGB" and to_model_image(rgb, 1).tobytes() == gray.tobytes()
    array = np.asarray(rgb)
    assert to_model_image(array, 3).tobytes() == rgb.tobytes()
    assert to_model_image(torch.tensor(array).permute(2, 0, 1), 3).tobytes() == rgb.tobytes()  # (C, H, W)
    assert to_model_image(array.astype(np.float32) / 255, 3).tobytes() == rgb.tobytes()  # floats in 0-1
    assert to_model_image(np.asarray(gray)[..., None], 3).tobytes() == gray.convert("RGB").tobytes()  # (H, W, 1)
    assert (
        to_model_image(np.asarray(gray).tolist(), 3).tobytes() == gray.convert("RGB").tobytes()
    )  # nested lists (datasets)
    with pytest.raises(
        FinetuneInputError, match=r"shape \(8, 8, 2\) has no image layout .* convert the dataset's images to RGB"
    ):
        to_model_image(np.zeros((8, 8, 2), np.uint8), 3)
    with pytest.raises(FinetuneInputError, match="shape \\(5, 8, 8\\)"):
        to_model_image(np.zeros((5, 8, 8), np.uint8), 3)
    with pytest.raises(FinetuneInputError, match=r"values 0\.\.1000: expected 8-bit values.*rescale"):
        to_model_image(np.arange(64, dtype=np.int32).reshape(8, 8) * 1000 // 63, 3)

    # Through the fine-tuning transforms: an RGBA or gray image is the model's 3-channel input.
    model = timm.create_model("resnet18_fdconv", num_classes=2, **TINY)
    _, test_transform = _image_transforms(model, 32)
    rgba = test_transform({"image": [rgb.convert("RGBA"), gray], "label": [0, 1]})["pixel_values"]
    expected = test_transform({"image": [rgb, gray.convert("RGB")], "label": [0, 1]})["pixel_values"]
    assert all(torch.equal(a, b) and a.shape == (3, 32, 32) for a, b in zip(rgba, expected, strict=True))


def test_ddp_on_two_cpu_processes_keeps_the_ranks_identical(tmp_path):
    """torchrun, 2 processes, gloo: the same entry point trains with DDP (every parameter used) and both ranks
    end with identical weights; only rank 0 writes the model folder."""
    from pathlib import Path

    from fdconv_testing import torchrun_on_two_cpu_processes
    from safetensors.torch import load_file

    run = torchrun_on_two_cpu_processes(Path(__file__).with_name("ddp_worker.py"), str(tmp_path), timeout=600)
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
