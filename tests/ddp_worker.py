"""Run by test_finetune.py under torchrun: a short DDP fine-tune, then each rank saves its final weights."""

import os
import sys

from safetensors.torch import save_file

from fdconv_zoo.finetune import finetune_classification

out = sys.argv[1]
result = finetune_classification(
    "resnet18_fdconv",
    "digits",
    out,
    epochs=1,
    image_size=32,
    batch_size=64,
    model_kwargs=dict(layers=(1, 1, 1, 1), channels=(32, 64, 96, 128)),
)
state = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
save_file(state, os.path.join(out, f"rank{os.environ['RANK']}.safetensors"))
