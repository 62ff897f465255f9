"""Bad input to every subcommand of ``fdconv-zoo`` (and to ``hub_scripts/publish.py``): one line on stderr naming the
problem and the fix, exit status 2, no traceback, nothing written, and all of it before any expensive work."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image
from safetensors.torch import save_file

import fdconv_zoo  # noqa: F401
from fdconv_zoo.cli import DEBUG_ENV, main
from fdconv_zoo.errors import InputError, MissingInputError, OutputExistsError
from fdconv_zoo.finetune import FinetuneInputError, load_image_classification_dataset
from fdconv_zoo.finetune.segmentation_data import load_semantic_segmentation_dataset

REPO = Path(__file__).resolve().parent.parent
TINY = dict(layers=(1, 1, 1, 1), channels=(32, 64, 96, 128))
TINY_ARGS = ["--model-arg", "layers=[1,1,1,1]", "--model-arg", "channels=[32,64,96,128]"]


def one_error_line(capsys, command: str) -> str:
    """The one error line of a refused command, checked for its form; returns the message.

    It is the last line on stderr and the only one with an error; progress bars (datasets' "Generating train
    split") may come before it.
    """
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "Traceback" not in err and sum("error" in line.lower() for line in lines) == 1, err
    prefix = f"{command}: error: "
    assert lines[-1].startswith(prefix), err
    return lines[-1].removeprefix(prefix)


def refused(capsys, argv: list[str]) -> str:
    """``main(argv)`` exits with 2 and one error line; returns the message."""
    assert main(argv) == 2
    return one_error_line(capsys, f"fdconv-zoo {argv[0]}")


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def finetune_args(dataset: Path | str, output_dir: Path, *extra: str) -> list[str]:
    return [
        "finetune-classification",
        "--model",
        "resnet18",
        "--dataset",
        str(dataset),
        "--output-dir",
        str(output_dir),
        *TINY_ARGS,
        *extra,
    ]


# ------------------------------------------------------------------------------------------------ datasets
def test_missing_and_empty_dataset_folders(tmp_path, capsys):
    message = refused(capsys, finetune_args(tmp_path / "no-such-folder", tmp_path / "out"))
    assert (
        f"dataset folder {tmp_path / 'no-such-folder'} does not exist" in message and "sub-folder per class" in message
    )
    (tmp_path / "empty").mkdir()
    message = refused(capsys, finetune_args(tmp_path / "empty", tmp_path / "out"))
    assert "holds no image files" in message and "one sub-folder per class, at least 2" in message
    with pytest.raises(FinetuneInputError, match="has no images/ folder"):
        load_semantic_segmentation_dataset(str(tmp_path / "empty"))
    (tmp_path / "empty" / "images").mkdir()
    (tmp_path / "empty" / "annotations").mkdir()
    with pytest.raises(FinetuneInputError, match="holds no image files"):
        load_semantic_segmentation_dataset(str(tmp_path / "empty"))
    assert not (tmp_path / "out").exists()


def test_a_single_class_is_refused(tmp_path, capsys):
    folder = image_folder(tmp_path / "one", {"cats": 3})
    message = refused(capsys, finetune_args(folder, tmp_path / "out"))
    assert "gives no classes (sub-folders: cats)" in message and "at least 2" in message
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["cat"])})
    images = [Image.new("RGB", (8, 8)) for _ in range(3)]
    Dataset.from_dict({"image": images, "label": [0, 0, 0]}, features=features).save_to_disk(tmp_path / "saved")
    with pytest.raises(FinetuneInputError, match="has 1 class \\(cat\\); a classifier needs at least 2"):
        load_image_classification_dataset(str(tmp_path / "saved"))


def test_unreadable_images_are_named_before_training(tmp_path, capsys, caplog):
    folder = image_folder(tmp_path / "data", {"a": 5, "b": 5})
    (folder / "b" / "9.png").write_bytes(b"not an image")
    good = folder / "a" / "0.png"
    (folder / "a" / "9.png").write_bytes(good.read_bytes()[:60])  # a truncated PNG
    message = refused(capsys, finetune_args(folder, tmp_path / "out"))
    assert "cannot be read" in message and "--skip-bad-images" in message
    assert str(folder / "b" / "9.png") in message or str(folder / "a" / "9.png") in message
    assert not (tmp_path / "out" / "checkpoints").exists()  # refused before training

    caplog.set_level(logging.WARNING)
    data = load_image_classification_dataset(str(folder), skip_bad_images=True)
    assert len(data["train"]) + len(data["test"]) == 10  # the 2 bad of 12 files left out
    assert "skipped" in caplog.text and "9.png" in caplog.text
    for split in data.values():
        assert all(image.size == (8, 8) for image in split["image"])  # every image left decodes
    train = ("--skip-bad-images", "--epochs", "1", "--image-size", "16", "--batch-size", "4")
    assert main(finetune_args(folder, tmp_path / "out", *train)) == 0  # the flag reaches the fine-tune
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_unreadable_mask_is_named(tmp_path):
    for name in ("images", "annotations"):
        (tmp_path / name).mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"{i}.png")
        Image.new("L", (8, 8)).save(tmp_path / "annotations" / f"{i}.png")
    (tmp_path / "annotations" / "3.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(FinetuneInputError, match=r"annotations/3\.png \(not an image file PIL can read\)"):
        load_semantic_segmentation_dataset(str(tmp_path))
    data, _ = load_semantic_segmentation_dataset(str(tmp_path), skip_bad_images=True)
    assert len(data["train"]) + len(data["test"]) == 3


def test_bad_id2label_is_one_line(tmp_path, capsys):
    base = ["finetune-segmentation", "--model", "m", "--dataset", "d", "--output-dir", str(tmp_path)]
    assert "is not a JSON object of id -> name" in refused(capsys, [*base, "--id2label", "{not json"])
    message = refused(capsys, [*base, "--id2label", str(tmp_path / "names.json")])
    assert f"--id2label file {tmp_path / 'names.json'} does not exist" in message


# ------------------------------------------------------------------------------------ models, checkpoints
def test_unknown_models(tmp_path, capsys):
    message = refused(
        capsys,
        ["finetune-classification", "--model", "resnet51_fdconv", "--dataset", "digits", "--output-dir", str(tmp_path)],
    )
    assert "unknown timm model 'resnet51_fdconv'" in message and "resnet50_fdconv" in message
    assert not (tmp_path / "model").exists()
    message = refused(capsys, ["export-onnx", "resnet18_fdconvv", "--out", str(tmp_path / "m.onnx")])
    assert "unknown timm model 'resnet18_fdconvv'" in message
    message = refused(capsys, ["export-onnx", "resnet18_fdconv.no_tag", "--out", str(tmp_path / "m.onnx")])
    assert "pretrained tags of resnet18_fdconv" in message
    message = refused(
        capsys, ["export-onnx", "resnet18_fdconv", "--out", str(tmp_path / "m.onnx"), "--model-arg", "no_such_arg=1"]
    )
    assert message.startswith("--model-arg no_such_arg:") and "no_such_arg" in message
    assert "is not a timm FDConv model" in refused(capsys, ["profile", "resnet18"])


def test_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "weights.safetensors"
    message = refused(
        capsys, ["export-onnx", "resnet18_fdconv", "--checkpoint", str(missing), "--out", str(tmp_path / "m.onnx")]
    )
    assert message == f"checkpoint {missing} does not exist (no such file); check the path"
    message = refused(capsys, ["export-onnx", f"local-dir:{tmp_path / 'no-model'}", "--out", str(tmp_path / "m.onnx")])
    assert "does not exist (no such folder)" in message
    uncached = "resnet152_fdconv.gluon_in1k"  # pretrained weights offline, not in the (test) cache
    message = refused(capsys, ["export-onnx", uncached, "--out", str(tmp_path / "m.onnx"), *TINY_ARGS])
    assert f"cannot load the pretrained weights of {uncached!r}" in message and "--checkpoint" in message
    message = refused(
        capsys,
        [
            "finetune-classification",
            "--model",
            uncached,
            "--dataset",
            "digits",
            "--output-dir",
            str(tmp_path),
            *TINY_ARGS,
        ],
    )
    assert f"cannot load the pretrained weights of {uncached!r}" in message and "resnet152_fdconv alone" in message
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "model").exists()


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    resnet34 = tmp_path / "resnet34.safetensors"  # the same stem and stages, more blocks
    save_file(timm.create_model("resnet34", channels=TINY["channels"]).state_dict(), str(resnet34))
    message = refused(
        capsys, ["export-onnx", "resnet18_fdconv", "--checkpoint", str(resnet34), "--out", str(out), *TINY_ARGS]
    )
    assert f"checkpoint {resnet34} does not fit resnet18_fdconv" in message and "unknown to the model" in message
    wide = tmp_path / "wide.safetensors"  # another width: its conv weights have other shapes
    save_file(timm.create_model("resnet18").state_dict(), str(wide))
    message = refused(
        capsys, ["export-onnx", "resnet18_fdconv", "--checkpoint", str(wide), "--out", str(out), *TINY_ARGS]
    )
    assert "does not fit resnet18_fdconv" in message and "does not match the model" in message
    other = tmp_path / "detector.pth"  # a pickle of other objects: refused, never unpickled
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"layers": object()}}, other)
    message = refused(
        capsys, ["export-onnx", "resnet18_fdconv", "--checkpoint", str(other), "--out", str(out), *TINY_ARGS]
    )
    assert "Weights only load failed" in message and ".safetensors" in message
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- outputs
def test_outputs_that_cannot_be_written(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("user data")
    message = refused(capsys, ["export-onnx", "resnet18_fdconv", "--out", str(a_file / "m.onnx")])
    assert message == f"cannot write --out {a_file / 'm.onnx'}: {a_file} is a file, not a folder; choose another --out"
    assert "is a folder; give the file to write" in refused(
        capsys, ["export-onnx", "resnet18_fdconv", "--out", str(tmp_path)]
    )
    message = refused(capsys, finetune_args("digits", a_file))
    assert message == f"--output-dir {a_file} is a file, not a folder; choose a folder"
    assert "is a file, not a folder" in refused(capsys, ["demo", "--output-dir", str(a_file / "runs")])
    assert a_file.read_text() == "user data"


def test_existing_outputs_are_kept(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_text("user data")
    message = refused(capsys, ["export-onnx", "resnet18_fdconv", "--out", str(out)])
    assert "exists; pass --overwrite" in message and out.read_text() == "user data"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_text("user model")
    message = refused(capsys, finetune_args("digits", tmp_path))
    assert "already holds a fine-tuned model; pass --overwrite" in message
    assert (tmp_path / "model" / "model.safetensors").read_text() == "user model"


def test_missing_onnx_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: importing it raises ImportError
    message = refused(capsys, ["export-onnx", "resnet18_fdconv", "--out", str(tmp_path / "m.onnx")])
    assert message.startswith("ONNX export needs 'onnxscript': pip install 'fdconv-zoo[onnx]'")


# ----------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["demo", "--epochs", "0"], "--epochs"),
        (["demo", "--pretrain-epochs", "-1"], "--pretrain-epochs"),
        (["profile", "resnet18_fdconv", "--batch", "0"], "--batch"),
        (["profile", "resnet18_fdconv", "--input-size", "3", "-32", "32"], "--input-size"),
        (["export-onnx", "resnet18_fdconv", "--out", "m.onnx", "--image-size", "0"], "--image-size"),
        (
            ["finetune-classification", "--model", "m", "--dataset", "d", "--output-dir", "out", "--epochs", "-1"],
            "--epochs",
        ),
        (
            ["finetune-classification", "--model", "m", "--dataset", "d", "--output-dir", "out", "--batch-size", "0"],
            "--batch-size",
        ),
        (["finetune-classification", "--model", "m", "--dataset", "d", "--output-dir", "out", "--lr", "-1e-3"], "--lr"),
        (
            ["finetune-classification", "--model", "m", "--dataset", "d", "--output-dir", "out", "--image-size", "-8"],
            "--image-size",
        ),
        (["finetune-segmentation", "--model", "m", "--dataset", "d", "--output-dir", "out", "--lr", "nan"], "--lr"),
        (
            ["finetune-segmentation", "--model", "m", "--dataset", "d", "--output-dir", "out", "--num-labels", "0"],
            "--num-labels",
        ),
        (
            [
                "finetune-classification",
                "--model",
                "m",
                "--dataset",
                "d",
                "--output-dir",
                "out",
                "--model-arg",
                "layers",
            ],
            "--model-arg",
        ),
    ],
)
def test_numbers_not_above_zero_and_malformed_arguments(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    message = one_error_line(capsys, f"fdconv-zoo {argv[0]}")
    assert message.startswith(f"argument {option}") and message.endswith(f"see fdconv-zoo {argv[0]} --help")


# ------------------------------------------------------------------------------------ the one mechanism
def test_the_error_classes_share_one_base():
    for error in (FinetuneInputError, MissingInputError, OutputExistsError):
        assert issubclass(error, InputError) and issubclass(error, ValueError)
    assert issubclass(MissingInputError, FileNotFoundError) and issubclass(OutputExistsError, FileExistsError)


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["export-onnx", "resnet18_fdconv", "--checkpoint", str(tmp_path / "no.safetensors"), "--out", "m.onnx"]
    for flags in (["--debug", *argv], [*argv, "--debug"]):
        assert main(flags) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "MissingInputError" in err
        assert err.splitlines()[-1].startswith("fdconv-zoo export-onnx: error: checkpoint")
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert main(argv) == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert main(argv) == 2 and "Traceback" not in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import fdconv_zoo.export

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(fdconv_zoo.export, "load_timm_model", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["export-onnx", "resnet18_fdconv", "--out", str(tmp_path / "m.onnx")])


def test_real_process_exit_status_and_stderr(tmp_path):
    """The installed entry point as a user runs it: status 2, one stderr line, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop(DEBUG_ENV, None)
    missing = tmp_path / "weights.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "fdconv_zoo",
        "export-onnx",
        "resnet18_fdconv",
        "--checkpoint",
        str(missing),
        "--out",
        str(tmp_path / "m.onnx"),
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [
        f"fdconv-zoo export-onnx: error: checkpoint {missing} does not exist (no such file); check the path"
    ]
    assert "Traceback" not in run.stdout + run.stderr and not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------- publish.py
def test_publish_bad_input(tmp_path, capsys, monkeypatch):
    from hub_scripts.publish import main as publish

    def refused_publish(argv: list[str]) -> str:
        assert publish(argv) == 2
        return one_error_line(capsys, "publish.py")

    variant = "resnet18_fdconv.tv_in1k"
    out = ["--out", str(tmp_path / "staging")]
    assert "unknown variant 'nope'" in refused_publish(["nope", "--org", "o", *out, "--dry-run"])
    a_file = tmp_path / "file.txt"
    a_file.write_text("user data")
    assert "is a file, not a folder" in refused_publish([variant, "--org", "o", "--out", str(a_file), "--dry-run"])
    missing = tmp_path / "resnet18.safetensors"
    message = refused_publish([variant, "--org", "o", *out, "--source-checkpoint", str(missing), "--dry-run"])
    assert message == f"--source-checkpoint {missing} does not exist; check the path"
    message = refused_publish([variant, "--org", "o", *out])  # conftest: no HF_TOKEN, an empty HF_HOME
    assert "no Hugging Face token" in message and "--dry-run" in message
    with pytest.raises(SystemExit) as exit_info:
        publish([variant, "--org", "o", "--max-rel-error", "0"])
    assert exit_info.value.code == 2 and "above 0" in one_error_line(capsys, "publish.py")
    assert not (tmp_path / "staging").exists()

    secret = "hf_" + "x" * 34  # a token is never printed, whatever goes wrong
    monkeypatch.setenv("HF_TOKEN", secret)
    assert publish(["nope", "--org", "o", *out]) == 2
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err


def test_publish_script_process(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "hub_scripts" / "publish.py"), "nope", "--org", "o", "--out", str(tmp_path / "s")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith("publish.py: error: unknown variant 'nope'")
