"""The picture of predicted instances beside FDConv's FBM attention maps: drawn from the model's own
post-processed instances, written as a PNG, never replaced unasked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detection_testing import draw, tiny_checkpoint
from fdconv_testing import perturb_attention
from instance_testing import TINY_MASK2FORMER
from PIL import Image

from fdconv_zoo.finetune.detection import load_backbone_source
from fdconv_zoo.finetune.instance_segmentation import build_mask2former
from fdconv_zoo.finetune.instance_segmentation.inputs import image_processor
from fdconv_zoo.finetune.instance_segmentation.pictures import plot_instances

pytest.importorskip("matplotlib")


def test_instances_and_fbm_maps_are_drawn(tmp_path):
    torch.manual_seed(0)
    model = build_mask2former(
        load_backbone_source(tiny_checkpoint(tmp_path / "ckpt")), {0: "a", 1: "b"}, **TINY_MASK2FORMER
    )
    perturb_attention(model)
    processor = image_processor(64, (0.5,) * 3, (0.5,) * 3)
    image, _ = draw(np.random.default_rng(0), (96, 80), 2)
    drawn = plot_instances(model, processor, image, tmp_path / "instances.png", threshold=0.0)
    bare = plot_instances(model, processor, image, tmp_path / "none.png", threshold=1.01)  # no instance passes
    assert model.training  # the model's mode is restored
    with Image.open(drawn) as a, Image.open(bare) as b:
        assert a.size == b.size and a.width > 2 * a.height  # the image and at least one FBM panel side by side
        assert not np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        plot_instances(model, processor, image, drawn)
