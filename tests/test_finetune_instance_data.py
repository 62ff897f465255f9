"""COCO masks for instance segmentation: polygons and RLE (compressed or not) decode to the same mask, crowd
regions are kept for COCO's evaluation to ignore but not trained on, empty images and polygons reaching outside
the image are handled, and every bad segmentation ends in one line naming the file and the fix.

The reference masks are numpy slices of the generated rectangles.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from instance_testing import edit_annotation, rectangle_polygon, rectangle_rle, write_instance_folder

from fdconv_zoo.finetune import FinetuneInputError
from fdconv_zoo.finetune.coco_data import CocoImage, CocoObject, load_coco_dataset, segmentation_rle
from fdconv_zoo.finetune.instance_segmentation import InstanceMetrics
from fdconv_zoo.finetune.instance_segmentation.inputs import InstanceInputs, image_processor
from fdconv_zoo.finetune.instance_segmentation.masks import instance_masks

BOX = (10, 20, 30, 25)  # x, y, width, height
SIZE = (64, 48)  # width, height


def rectangle(box=BOX, size=SIZE) -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros(size[::-1], dtype=bool)
    mask[max(y, 0) : y + h, max(x, 0) : x + w] = True
    return mask


def decoded(segmentation, size=SIZE) -> np.ndarray:
    rle = segmentation_rle(segmentation, size, "test")
    record = CocoImage(1, None, *size, (CocoObject((0, 0, 1, 1), 0, rle),))
    return instance_masks(record)[0]


def test_polygons_and_rle_decode_to_the_same_mask():
    expected = rectangle()
    for segmentation in (
        rectangle_polygon(BOX),
        rectangle_rle(BOX, SIZE, compressed=True),
        rectangle_rle(BOX, SIZE, compressed=False),
    ):
        np.testing.assert_array_equal(decoded(segmentation), expected)


def test_polygons_outside_the_image_are_clipped():
    outside = (-12, 30, 40, 40)  # reaches past the left and the bottom edges
    np.testing.assert_array_equal(decoded(rectangle_polygon(outside)), rectangle(outside))


def test_folder_ids_masks_empty_images_and_crowd_regions(tmp_path):
    data = write_instance_folder(tmp_path, n_train=4, n_val=2)
    coco = json.loads((data / "train" / "_annotations.coco.json").read_text())
    crowd_box = (90, 90, 30, 30)
    edit_annotation(
        data,
        "train",
        1,
        iscrowd=1,
        bbox=list(crowd_box),
        segmentation=rectangle_rle(crowd_box, (128, 128), compressed=False),
    )
    splits = load_coco_dataset(data, masks=True)
    assert splits.id2label == {0: "red", 1: "green", 2: "blue"} and splits.category_ids == {0: 3, 1: 7, 2: 11}
    assert not splits.train[0].objects  # the image without objects is kept
    annotated = [obj for image in splits.train for obj in image.objects]
    assert len(annotated) == len(coco["annotations"]) and [o.iscrowd for o in annotated].count(True) == 1
    record = next(image for image in splits.train if any(o.iscrowd for o in image.objects))
    masks = instance_masks(record)
    for obj, mask, annotation in zip(
        record.objects, masks, [a for a in coco["annotations"] if a["image_id"] == record.image_id], strict=True
    ):
        box = crowd_box if obj.iscrowd else annotation["bbox"]
        np.testing.assert_array_equal(mask, rectangle(box, (128, 128)))

    inputs = InstanceInputs(splits.train, image_processor(64, (0.5,) * 3, (0.5,) * 3))
    example = inputs[splits.train.index(record)]
    assert example["mask_labels"].shape == (len(record.objects) - 1, 64, 64)  # the crowd region is not trained on
    assert example["class_labels"].tolist() == [o.label for o in record.objects if not o.iscrowd]
    assert inputs[0]["mask_labels"].shape == (0, 64, 64) and inputs[0]["class_labels"].numel() == 0


def test_the_evaluation_ignores_detections_on_crowd_regions():
    real, crowd = (4, 4, 20, 20), (36, 30, 24, 16)
    objects = tuple(
        CocoObject(box, 0, segmentation_rle(rectangle_polygon(box), SIZE, "test"), iscrowd)
        for box, iscrowd in ((real, False), (crowd, True))
    )
    record = CocoImage(1, None, *SIZE, objects)
    queries = 5
    class_logits = torch.full((1, queries, 2), -10.0)
    class_logits[0, :, 1] = 10.0  # "no object"
    mask_logits = torch.full((1, queries, SIZE[1], SIZE[0]), -10.0)
    for query, (box, score) in enumerate(((crowd, 10.0), (real, 1.0))):  # the crowd detection scores higher
        class_logits[0, query] = torch.tensor([score, 0.0])
        mask_logits[0, query][torch.from_numpy(rectangle(box))] = 10.0
    processor = image_processor(64, (0.5,) * 3, (0.5,) * 3)
    prediction = SimpleNamespace(predictions=(class_logits, mask_logits), label_ids=torch.tensor([0]))
    scores = InstanceMetrics(processor, {0: "red"}, [record])(prediction)
    assert scores["segm_map"] == pytest.approx(1.0)  # not a false positive, as in COCO
    # Dropped instead, the crowd region's detection would be a false positive ranked first.
    dropped = CocoImage(1, None, *SIZE, objects[:1])
    assert InstanceMetrics(processor, {0: "red"}, [dropped])(prediction)["segm_map"] < 0.6


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            dict(segmentation=None),
            r"annotation 1 has no 'segmentation': instance segmentation needs each object's mask",
        ),
        (dict(segmentation=[]), r"annotation 1 has no 'segmentation'"),
        (
            dict(segmentation={"size": [64, 64], "counts": "PPYo1"}),
            r"mask of size \[64, 64\] \(height, width\), its image is \[128, 128\]",
        ),
        (dict(segmentation={"size": [128, 128], "counts": [5, 7]}), r"annotation 1 has a broken RLE mask .*export"),
        (dict(segmentation={"size": [128, 128], "counts": "not rle"}), r"annotation 1 has a broken RLE mask"),
        (dict(segmentation=[[1, 2, 3, 4, 5]]), r"annotation 1 has a broken polygon segmentation: write it as"),
        (dict(segmentation=[[1, 2, 3, 4]]), r"annotation 1 has a broken polygon segmentation"),
        (dict(segmentation=[[1, 2, "x", 4, 5, 6]]), r"annotation 1 has a broken polygon segmentation"),
    ],
)
def test_bad_segmentations_name_the_file_and_the_fix(tmp_path, changes, message):
    data = write_instance_folder(tmp_path, n_train=3, n_val=2)
    edit_annotation(data, "train", 0, **changes)
    with pytest.raises(FinetuneInputError, match=message) as error:
        load_coco_dataset(data, masks=True)
    assert str(data / "train" / "_annotations.coco.json") in str(error.value) and "\n" not in str(error.value)
    load_coco_dataset(data)  # detection does not need the masks


def test_cppe5_style_dataset_with_polygon_masks(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value

    rows = {"image": [], "objects": []}
    for i in range(3):
        rows["image"].append(Image().encode_example(np.zeros((SIZE[1], SIZE[0], 3), dtype=np.uint8)))
        boxes = [list(map(float, BOX))] * (i % 2)
        rows["objects"].append(
            {"bbox": boxes, "category": [1] * (i % 2), "segmentation": [rectangle_polygon(BOX)] * (i % 2)}
        )
    features = Features(
        {
            "image": Image(),
            "objects": {
                "bbox": List(List(Value("float32"))),
                "category": List(ClassLabel(names=["mask", "glove"])),
                "segmentation": List(List(List(Value("float32")))),
            },
        }
    )
    data = Dataset.from_dict(rows, features=features)
    DatasetDict(train=data, test=data.select([1])).save_to_disk(tmp_path / "cppe")
    splits = load_coco_dataset(tmp_path / "cppe", masks=True)
    (mask,) = instance_masks(splits.train[1])
    np.testing.assert_array_equal(mask, rectangle())
    assert not splits.train[0].objects
