"""The COCO data layer of detection fine-tuning: folders and datasets read, cleaned and checked.

Generated COCO folders (ids 3/7/11, an image without boxes) and cppe-5-style datasets; every bad input
must end in a FinetuneInputError naming the file and the fix.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from detection_testing import NAMES, SOURCE_IDS, write_coco_folder, write_coco_split
from PIL import Image

from fdconv_zoo.finetune import FinetuneInputError
from fdconv_zoo.finetune.coco_data import load_coco_dataset
from fdconv_zoo.finetune.detection.inputs import DetectionInputs, image_processor, round_image_size


def edit_json(folder, change):
    file = folder / "_annotations.coco.json"
    coco = json.loads(file.read_text())
    change(coco)
    file.write_text(json.dumps(coco))
    return file


def test_ids_are_remapped_names_kept_and_empty_images_kept(tmp_path):
    coco = write_coco_folder(tmp_path, n_train=6, n_val=3)
    splits = load_coco_dataset(coco)
    assert splits.id2label == dict(enumerate(NAMES))
    assert splits.category_ids == dict(enumerate(SOURCE_IDS))
    assert len(splits.train) == 6 and len(splits.test) == 3
    assert not splits.train[0].objects  # the generator leaves the first image empty; it is kept
    source = json.loads((tmp_path / "train" / "_annotations.coco.json").read_text())
    first = next(a for a in source["annotations"] if a["image_id"] == 2)
    record = splits.train[1]
    assert record.objects[0].label == SOURCE_IDS.index(first["category_id"])
    assert record.objects[0].bbox == tuple(float(v) for v in first["bbox"])


def test_crowd_and_degenerate_boxes_are_dropped_and_counted_boxes_clipped(tmp_path, caplog):
    coco = write_coco_folder(tmp_path, n_train=3, n_val=2)

    def change(data):
        extra = dict(image_id=2, category_id=3, iscrowd=0)
        data["annotations"] += [
            dict(extra, id=100, bbox=[10, 10, 0, 20]),  # zero width
            dict(extra, id=101, bbox=[200, 10, 20, 20]),  # outside the 128 px image
            dict(extra, id=102, bbox=[10, 10, 30, 30], iscrowd=1),
            dict(extra, id=103, bbox=[-8, 100, 30, 60]),  # clipped to (0, 100, 22, 28)
        ]

    edit_json(coco / "train", change)
    with caplog.at_level(logging.INFO):
        splits = load_coco_dataset(coco)
    assert splits.dropped == {"degenerate": 2, "crowd": 1, "clipped (kept)": 1}
    assert "dropped 1 clipped (kept) boxes, 1 crowd boxes, 2 degenerate boxes" in caplog.text
    assert splits.train[1].objects[-1].bbox == (0.0, 100.0, 22.0, 28.0)


def test_labelme_layout_annotations_json_with_subfolder_file_names(tmp_path):
    for split in ("train", "val"):
        write_coco_split(tmp_path / split / "JPEGImages", 2, seed=0, json_name="annotations.json")
        file = tmp_path / split / "JPEGImages" / "annotations.json"
        coco = json.loads(file.read_text())
        for image in coco["images"]:
            image["file_name"] = "JPEGImages/" + image["file_name"]
        (tmp_path / split / "annotations.json").write_text(json.dumps(coco))
        file.unlink()
    splits = load_coco_dataset(tmp_path)
    assert len(splits.train) == 2 and splits.train[1].open().size == (128, 128)


def test_gray_and_rgba_images_become_rgb_and_sizes_round_to_32(tmp_path):
    coco = write_coco_folder(tmp_path, n_train=3, n_val=2, size=(100, 70))
    Image.open(coco / "train" / "img1.png").convert("L").save(coco / "train" / "img1.png")
    Image.open(coco / "train" / "img2.png").convert("RGBA").save(coco / "train" / "img2.png")
    splits = load_coco_dataset(coco)
    size = round_image_size(100)
    assert size == 96 and round_image_size(10) == 32
    inputs = DetectionInputs(splits.train, image_processor("rt-detr-v2", size, (0.5,) * 3, (0.25,) * 3))
    for index in (1, 2):
        example = inputs[index]
        assert example["pixel_values"].shape == (3, 96, 96)
        boxes = example["labels"]["boxes"]  # normalised centre/size, back in the 100x70 image's pixels
        expected = splits.train[index].objects[0].bbox
        x, y, w, h = expected
        np.testing.assert_allclose(
            boxes[0].numpy() * [100, 70, 100, 70], [x + w / 2, y + h / 2, w, h], rtol=1e-5, atol=1e-3
        )
    gray = np.array(Image.open(coco / "train" / "img1.png"))
    pixel = inputs[1]["pixel_values"][:, 0, 0]
    assert pixel[0] == pixel[1] == pixel[2]  # gray repeated into three channels
    assert abs(float(pixel[0]) - (gray[0, 0] / 255 - 0.5) / 0.25) < 0.2  # normalised with the given statistics


def test_cppe5_style_dataset_with_class_names(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value

    rng = np.random.default_rng(0)
    rows = {"image": [], "image_id": [], "objects": []}
    for i in range(4):
        pixels = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
        rows["image"].append(Image().encode_example(pixels))
        rows["image_id"].append(100 + i)
        rows["objects"].append({"bbox": [[4.0, 4.0, 20.0, 30.0]] * (i % 2), "category": [1] * (i % 2)})
    features = Features(
        {
            "image": Image(),
            "image_id": Value("int64"),
            "objects": {"bbox": List(List(Value("float32"))), "category": List(ClassLabel(names=["mask", "glove"]))},
        }
    )
    data = Dataset.from_dict(rows, features=features)
    DatasetDict(train=data, test=data.select([1, 2])).save_to_disk(tmp_path / "cppe")
    splits = load_coco_dataset(tmp_path / "cppe")
    assert splits.id2label == {0: "mask", 1: "glove"}
    assert [len(r.objects) for r in splits.train] == [0, 1, 0, 1]
    assert splits.train[1].objects[0].label == 1 and splits.train[1].image_id == 101
    assert splits.train[1].open().size == (80, 64)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["images"][1].update(file_name="gone.png"),
            r"image 'gone.png' \(id 2\) is missing at .*gone.png: put the image there",
        ),
        (
            lambda c: c["annotations"][0].update(bbox=[1, 2, "wide", 4]),
            r"annotation 1 has a non-numeric bbox .*four numbers",
        ),
        (lambda c: c["annotations"][0].update(bbox=[1, 2, -3, 4]), r"negative box size .*not \[x1, y1, x2, y2\]"),
        (lambda c: c["annotations"][0].update(category_id=99), r"category_id 99, not in 'categories': add it"),
        (lambda c: c["annotations"][0].update(image_id=77), r"points to image id 77, which is not in 'images'"),
    ],
)
def test_bad_annotations_name_the_file_and_the_fix(tmp_path, change, message):
    coco = write_coco_folder(tmp_path, n_train=4, n_val=2)
    file = edit_json(coco / "train", change)
    with pytest.raises(FinetuneInputError, match=message) as error:
        load_coco_dataset(coco)
    assert str(file) in str(error.value) and "\n" not in str(error.value)


def test_empty_split_and_missing_folders_are_refused(tmp_path):
    coco = write_coco_folder(tmp_path, n_train=3, n_val=2)
    edit_json(coco / "valid", lambda c: c.update(images=[], annotations=[]))
    with pytest.raises(FinetuneInputError, match=r"the evaluation split of .* holds no images: add images"):
        load_coco_dataset(coco)
    (coco / "valid" / "_annotations.coco.json").unlink()
    with pytest.raises(FinetuneInputError, match=r"valid has no COCO annotation file: put its annotations in"):
        load_coco_dataset(coco)
    with pytest.raises(FinetuneInputError, match=r"needs train/ and val/ \(or valid/\) sub-folders"):
        load_coco_dataset(coco / "train")


def test_unreadable_and_missing_images_are_refused_or_skipped_with_their_objects(tmp_path, caplog):
    coco = write_coco_folder(tmp_path, n_train=5, n_val=2)
    source = json.loads((coco / "train" / "_annotations.coco.json").read_text())
    objects_of = {i: sum(a["image_id"] == i for a in source["annotations"]) for i in (2, 5)}  # imgN has id N+1
    (coco / "train" / "img2.png").write_bytes(b"not a png")
    with pytest.raises(
        FinetuneInputError,
        match=r"img2.png .* is not a readable image: replace or remove it, or pass "
        r"--skip-bad-images \(skip_bad_images=True\)",
    ):
        load_coco_dataset(coco)
    (coco / "train" / "img3.png").unlink()
    with caplog.at_level(logging.WARNING):
        splits = load_coco_dataset(coco, skip_bad_images=True)
    assert [r.image_id for r in splits.train] == [1, 2, 5]  # ids 3 and 4 left out, the others untouched
    assert [len(r.objects) for r in splits.train[1:]] == [objects_of[2], objects_of[5]] and objects_of[5] > 0
    assert len(splits.skipped_images) == 2 and "skipped 2 images that cannot be read" in caplog.text


def test_unreadable_image_in_a_dataset_names_its_row(tmp_path):
    from datasets import Dataset, DatasetDict, Features, Image, List, Value

    rows = {"image": [], "objects": []}
    for i in range(3):
        rows["image"].append(Image().encode_example(np.full((32, 40, 3), 50 * i, dtype=np.uint8)))
        rows["objects"].append({"bbox": [[2.0, 2.0, 10.0, 10.0]], "category": [0]})
    rows["image"][1] = {"bytes": b"\x89PNG broken", "path": None}
    features = Features(
        {"image": Image(), "objects": {"bbox": List(List(Value("float32"))), "category": List(Value("int64"))}}
    )
    data = Dataset.from_dict(rows, features=features)
    DatasetDict(train=data, test=data.select([0])).save_to_disk(tmp_path / "d")
    with pytest.raises(FinetuneInputError, match=r"split 'train', row 1 .* is not a readable image: repair or drop"):
        load_coco_dataset(tmp_path / "d", id2label={0: "box"})
    splits = load_coco_dataset(tmp_path / "d", id2label={0: "box"}, skip_bad_images=True)
    assert [r.image_id for r in splits.train] == [0, 2] and splits.train[1].open().size == (40, 32)
