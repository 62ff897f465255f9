"""fdconv-zoo's segmentation fine-tuning: HF Trainer on a datasets dataset, checked before training, saved for transformers.

The model is a tiny FDConv SegFormer (two stages, every Mix-FFN projection a real FDConv) written with
save_pretrained; the data are 32x32 noise images with one red (class 1) or blue (class 2) rectangle on
background (class 0), so a few steps learn them.
"""

import json
import logging

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from fdconv_testing import relative_error
from huggingface_hub import ModelCard
from PIL import Image as PILImage
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, SegformerImageProcessor

import fdconv_zoo  # noqa: F401
from fdconv_zoo import FDConv
from fdconv_zoo.cli import main
from fdconv_zoo.finetune import (
    FinetuneInputError,
    SegmentationMetrics,
    confusion_matrix,
    finetune_segmentation,
    load_semantic_segmentation_dataset,
    mask_label_counts,
    segmentation_metrics,
)
from fdconv_zoo.finetune.segmentation import _transform
from fdconv_zoo.finetune.segmentation_model import load_config, load_model
from fdconv_zoo.transformers_models.segformer import FDConvSegformerConfig, FDConvSegformerForSemanticSegmentation

SIZE = 32
NAMES = {0: "background", 1: "red", 2: "blue"}


def rectangles(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        image = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        (x, y), (w, h) = rng.integers(2, SIZE // 2, 2), rng.integers(8, SIZE // 2, 2)
        label = 1 + i % 2
        mask[y : y + h, x : x + w] = label
        image[y : y + h, x : x + w, 0 if label == 1 else 2] = 220
        images.append(image)
        masks.append(mask)
    return images, masks


def segmentation_dataset(n: int, seed: int) -> Dataset:
    images, masks = rectangles(n, seed)
    features = Features({"image": Image(), "annotation": Image()})
    return Dataset.from_dict(
        {"image": [PILImage.fromarray(i) for i in images], "annotation": [PILImage.fromarray(m) for m in masks]},
        features=features,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = FDConvSegformerConfig(
        num_encoder_blocks=2,
        hidden_sizes=[32, 64],
        num_attention_heads=[1, 2],
        depths=[1, 1],
        mlp_ratios=[2, 2],
        sr_ratios=[2, 1],
        patch_sizes=[3, 3],
        strides=[2, 2],
        decoder_hidden_size=32,
        drop_path_rate=0.0,
        fdconv_kernel_num=4,
        id2label=NAMES,
        label2id={v: k for k, v in NAMES.items()},
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-segformer")
    FDConvSegformerForSemanticSegmentation(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rectangles")
    DatasetDict(train=segmentation_dataset(16, seed=0), validation=segmentation_dataset(8, seed=1)).save_to_disk(folder)
    (folder / "id2label.json").write_text(json.dumps(NAMES))
    return folder


def test_finetune_learns_saves_reloads_and_resumes(model_dir, data_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    first = finetune_segmentation(str(model_dir), str(data_dir), out, epochs=3, learning_rate=5e-3, image_size=SIZE)
    with pytest.raises(FileExistsError, match="--overwrite"):  # refused before any training
        finetune_segmentation(str(model_dir), str(data_dir), out, epochs=6, image_size=SIZE)
    # Resuming at the last step trains nothing: the checkpoint's weights (saved in the Hub's key layout) are restored.
    again = finetune_segmentation(
        str(model_dir), str(data_dir), out, epochs=3, learning_rate=5e-3, image_size=SIZE, overwrite=True
    )
    assert "resuming from the last checkpoint" in caplog.text
    assert (again.mean_iou, again.eval_loss) == (first.mean_iou, first.eval_loss)
    result = finetune_segmentation(
        str(model_dir), str(data_dir), out, epochs=6, learning_rate=5e-3, image_size=SIZE, overwrite=True
    )
    state = json.loads((out / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text())
    assert [e["epoch"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]  # 4-6 by the resumed run
    assert result.mean_iou > max(0.6, first.mean_iou) and min(result.per_class_iou.values()) > 0.4
    assert "mean IoU" in caplog.text and "IoU blue" in caplog.text  # the final metrics table

    # The saved folder: the FDConv class with the dataset's names, its processor, the trained model's outputs.
    folder = result.saved_to
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(model) is FDConvSegformerForSemanticSegmentation and model.config.id2label == NAMES
    assert isinstance(processor, SegformerImageProcessor) and processor.size["height"] == SIZE
    assert any(isinstance(m, FDConv) and m.use_fdconv for m in model.modules())
    images, masks = rectangles(8, seed=1)  # the validation split
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    result.model.eval()
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
        assert torch.equal(logits, result.model(pixel_values=pixels).logits)
    # The reported mIoU, recomputed independently: per-class IoU of the upsampled argmax over the validation set.
    predicted = (
        torch.nn.functional.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        .argmax(1)
        .numpy()
    )
    truth = np.stack(masks)
    ious = [((predicted == c) & (truth == c)).sum() / ((predicted == c) | (truth == c)).sum() for c in range(3)]
    assert result.mean_iou == pytest.approx(np.mean(ious), abs=1e-6)
    assert result.pixel_accuracy == pytest.approx((predicted == truth).mean(), abs=1e-6)

    card = ModelCard.load(folder / "README.md")
    assert "fdconv" in card.data.tags and card.data.pipeline_tag == "image-segmentation"
    miou = {r.metric_type: r.metric_value for r in card.data.eval_results}["mean_iou"]
    assert miou == round(result.mean_iou, 4) and f"{result.mean_iou:.4f}" in card.text


def test_cli_on_an_images_and_annotations_folder(model_dir, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    images, masks = rectangles(8, seed=2)
    for split, index in (("train", range(6)), ("validation", range(6, 8))):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "annotations").mkdir()
        for i in index:
            PILImage.fromarray(images[i]).convert("RGBA").save(
                tmp_path / split / "images" / f"{i}.png"
            )  # converted to RGB
            PILImage.fromarray(masks[i]).save(tmp_path / split / "annotations" / f"{i}.png")
    data, names = load_semantic_segmentation_dataset(str(tmp_path))
    assert (len(data["train"]), len(data["test"]), names) == (6, 2, None)
    args = [
        "finetune-segmentation",
        "--model",
        str(model_dir),
        "--dataset",
        str(tmp_path),
        "--output-dir",
        str(tmp_path / "out"),
        "--epochs",
        "1",
        "--image-size",
        str(SIZE),
        "--id2label",
        json.dumps({"0": "bg", "1": "r", "2": "b"}),
    ]
    assert main(args) == 0
    assert (
        "mean IoU" in caplog.text
        and "IoU b " in caplog.text
        and (tmp_path / "out" / "model" / "model.safetensors").is_file()
    )
    assert AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "out" / "model").config.id2label == {
        0: "bg",
        1: "r",
        2: "b",
    }
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.splitlines()) == 1  # one clean line, not a traceback


def test_metrics_do_not_count_ignored_pixels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (3, 16, 16))
    labels[:, :5] = 255
    predictions = rng.integers(0, 4, (3, 16, 16))
    metrics, iou = segmentation_metrics(confusion_matrix(torch.tensor(predictions), torch.tensor(labels), 4).numpy())
    valid = labels != 255
    expected = [
        ((predictions == c) & (labels == c) & valid).sum() / (((predictions == c) | (labels == c)) & valid).sum()
        for c in range(4)
    ]
    np.testing.assert_allclose(iou, expected)
    assert metrics["mean_iou"] == pytest.approx(np.mean(expected))
    assert metrics["pixel_accuracy"] == pytest.approx((predictions == labels)[valid].mean())

    changed = predictions.copy()
    changed[~valid] = 3 - changed[~valid]  # other predictions on ignored pixels: the same metrics
    again, _ = segmentation_metrics(confusion_matrix(torch.tensor(changed), torch.tensor(labels), 4).numpy())
    assert again == metrics

    # Trainer's batch_eval_metrics: batch by batch, the same result as all at once; then a fresh matrix.
    from transformers import EvalPrediction

    metric = SegmentationMetrics(4)
    assert metric(EvalPrediction(torch.tensor(predictions[:2]), torch.tensor(labels[:2])), compute_result=False) == {}
    assert (
        metric(EvalPrediction(torch.tensor(predictions[2:]), torch.tensor(labels[2:])), compute_result=True) == metrics
    )
    assert metric(EvalPrediction(torch.tensor(predictions), torch.tensor(labels)), compute_result=True) == metrics


def test_dataset_without_a_mask_column_names_the_fix(tmp_path):
    images, _ = rectangles(2, seed=0)
    Dataset.from_dict({"image": [PILImage.fromarray(i) for i in images], "caption": ["a", "b"]}).save_to_disk(
        tmp_path / "captions"
    )
    with pytest.raises(
        FinetuneInputError,
        match=r"segmentation-mask column \(one of annotation, label.*found \['image', 'caption'\].*--mask-column",
    ):
        load_semantic_segmentation_dataset(str(tmp_path / "captions"))
    classes = Dataset.from_dict(
        {"image": [PILImage.fromarray(i) for i in images], "label": [0, 1]},
        features=Features(image=Image(), label=ClassLabel(names=["a", "b"])),
    )
    classes.save_to_disk(tmp_path / "classes")
    with pytest.raises(FinetuneInputError, match="image-classification dataset.*finetune-classification"):
        load_semantic_segmentation_dataset(str(tmp_path / "classes"))


def test_mask_values_outside_the_classes_are_refused_before_training(model_dir, tmp_path):
    images, masks = rectangles(4, seed=0)
    masks[3][:2, :3] = 7  # 6 pixels of a class the model does not have
    features = Features({"image": Image(), "annotation": Image()})
    Dataset.from_dict(
        {"image": [PILImage.fromarray(i) for i in images], "annotation": [PILImage.fromarray(m) for m in masks]},
        features=features,
    ).save_to_disk(tmp_path / "data")
    with pytest.raises(
        FinetuneInputError, match=r"outside the 3 classes 0\.\.2 and 255.*7 \(6 pixels in 1 masks.*--num-labels 8"
    ):
        finetune_segmentation(str(model_dir), str(tmp_path / "data"), tmp_path / "out", num_labels=3, image_size=SIZE)
    assert not (tmp_path / "out" / "checkpoints").exists()

    # Classes 1..3 with 0 for "unlabelled" (ADE20k style): the fix is reduce_labels, which maps 0 -> 255 and c -> c - 1.
    shifted = [m + 1 for m in rectangles(4, seed=0)[1]]
    shifted[0][:4, :4] = 0
    counts = mask_label_counts(shifted)
    assert set(counts) == {0, 1, 2, 3} and counts[0] == (16, 1, 0)  # (pixels, masks, first mask)
    Dataset.from_dict(
        {
            "image": [PILImage.fromarray(i) for i in images],
            "annotation": [PILImage.fromarray(m.astype(np.uint8)) for m in shifted],
        },
        features=features,
    ).save_to_disk(tmp_path / "shifted")
    with pytest.raises(FinetuneInputError, match="pass --reduce-labels"):
        finetune_segmentation(
            str(model_dir), str(tmp_path / "shifted"), tmp_path / "out", num_labels=3, image_size=SIZE
        )
    assert set(mask_label_counts(shifted, reduce_labels=True)) == {255, 0, 1, 2}


def test_images_of_other_channel_counts(model_dir):
    processor = SegformerImageProcessor(size={"height": SIZE, "width": SIZE})
    transform = _transform(processor, channels=3, train=False)
    images, masks = rectangles(1, seed=0)
    rgb = PILImage.fromarray(images[0])
    reference = transform({"image": [rgb], "annotation": [masks[0]]})
    gray = rgb.convert("L")
    for image, expected in (
        (rgb.convert("RGBA"), rgb),
        (gray, gray.convert("RGB")),
        (np.asarray(gray), gray.convert("RGB")),
        (np.moveaxis(images[0], -1, 0), rgb),
    ):
        got = transform({"image": [image], "annotation": [masks[0]]})
        want = transform({"image": [expected], "annotation": [masks[0]]})
        assert torch.equal(got["pixel_values"][0], want["pixel_values"][0]) and torch.equal(
            got["labels"][0], reference["labels"][0]
        )
    with pytest.raises(FinetuneInputError, match=r"shape \(32, 32, 2\).*convert the dataset's images to RGB"):
        transform({"image": [np.zeros((SIZE, SIZE, 2), np.uint8)], "annotation": [masks[0]]})
    with pytest.raises(FinetuneInputError, match="colour-coded"):
        transform({"image": [rgb], "annotation": [images[0]]})  # an RGB "mask"
    with pytest.raises(FinetuneInputError, match="each mask must have its image's size"):
        transform({"image": [rgb], "annotation": [masks[0][:16]]})


def test_native_upernet_backbone_is_converted_to_fdconv(tmp_path):
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    from fdconv_zoo.transformers_models.convnext import FDConvConvNextBackbone

    backbone = ConvNextConfig(
        hidden_sizes=[32, 64, 96, 128],
        depths=[1, 1, 1, 1],
        layer_scale_init_value=1.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = UperNetConfig(
        backbone_config=backbone, hidden_size=32, auxiliary_in_channels=96, auxiliary_channels=16, id2label=NAMES
    )
    torch.manual_seed(0)
    native = UperNetForSemanticSegmentation(config).eval()
    native.save_pretrained(tmp_path / "native")
    model = load_model(str(tmp_path / "native"), load_config(str(tmp_path / "native")), NAMES).eval()
    assert type(model.backbone) is FDConvConvNextBackbone and model.config.loss_ignore_index == 255
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(model(pixel_values=x).logits, native(pixel_values=x).logits) <= 1e-5  # neutral attentions
    model.save_pretrained(tmp_path / "fdconv")
    assert (
        type(AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "fdconv").backbone) is FDConvConvNextBackbone
    )


def test_models_that_cannot_be_fine_tuned_name_the_fix(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    with pytest.raises(FinetuneInputError, match="there is no model folder .*save_pretrained"):
        load_config(str(tmp_path / "missing"))
    ResNetForImageClassification(
        ResNetConfig(hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], embedding_size=8)
    ).save_pretrained(tmp_path / "resnet")
    with pytest.raises(FinetuneInputError, match="'resnet' model, not a semantic-segmentation model.*SegFormer"):
        load_config(str(tmp_path / "resnet"))
