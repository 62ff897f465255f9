"""Run by test_finetune_coco_ddp.py under torchrun: a short DDP detection or instance-segmentation fine-tune on a
generated COCO folder, then each rank saves its final weights."""

import json
import os
import sys

from detection_testing import TINY_DETECTOR  # importing it registers the tiny backbone the checkpoint names
from instance_testing import TINY_MASK2FORMER
from safetensors.torch import save_file

task, checkpoint, data, out = sys.argv[1:5]
if task == "detection":
    from fdconv_zoo.finetune.detection import finetune_detection

    result = finetune_detection(
        checkpoint, data, out, epochs=1, batch_size=4, image_size=128, detector_config=TINY_DETECTOR
    )
else:
    from fdconv_zoo.finetune.instance_segmentation import finetune_instance_segmentation

    result = finetune_instance_segmentation(
        checkpoint, data, out, epochs=1, batch_size=4, image_size=64, model_config=TINY_MASK2FORMER
    )
rank = os.environ["RANK"]
# Clones: the detector ties its decoder's heads to its top-level ones, and safetensors refuses shared memory.
state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
save_file(state, os.path.join(out, f"rank{rank}.safetensors"))
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(result.metrics, f)
