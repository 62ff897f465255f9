"""Fine-tuning the FDConv variants with the Hugging Face Trainer, from a native checkpoint to a reloaded one.

Each family: a tiny random native checkpoint with its native image processor, loaded as FDConv, trained
for a few steps on a small `datasets.Dataset` of images, checkpointed by the Trainer and reloaded.
"""

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from test_transformers_common import family_param, random_native
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

from fdconv_zoo import FDConv

STEPS = 4


def colour_dataset(size: int, n: int = 16) -> Dataset:
    """Two classes a network can tell apart in a few steps: reddish and bluish noise images."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(n):
        label = i % 2
        pixels = rng.integers(0, 128, (size, size, 3), dtype=np.uint8)
        pixels[..., 0 if label == 0 else 2] += 127
        images.append(PILImage.fromarray(pixels))
        labels.append(label)
    features = Features({"image": Image(), "label": ClassLabel(names=["red", "blue"])})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


@family_param
def test_trainer_fine_tunes_a_converted_native_checkpoint_saves_and_reloads(family, tmp_path):
    native = random_native(
        family.native_classifier,
        family.native(num_labels=2, id2label={0: "red", 1: "blue"}, label2id={"red": 0, "blue": 1}),
    )
    native.save_pretrained(tmp_path / "native")
    family.image_processor(size=family.image_processor_size).save_pretrained(tmp_path / "native")

    model = family.classifier.from_pretrained(tmp_path / "native")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "native")

    def preprocess(batch):
        return {
            "pixel_values": processor(images=batch["image"], return_tensors="pt")["pixel_values"],
            "labels": batch["label"],
        }

    dataset = colour_dataset(family.image_size).with_transform(preprocess)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        save_steps=STEPS,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    result = trainer.train()
    metrics = trainer.evaluate()

    assert result.global_step == STEPS and np.isfinite(result.training_loss) and np.isfinite(metrics["eval_loss"])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == STEPS and all(np.isfinite(losses))
    layers = [m for m in trainer.model.modules() if isinstance(m, FDConv) and m.use_fdconv]
    assert all(torch.count_nonzero(layer.KSM_Global.kernel_fc.weight) > 0 for layer in layers)  # the attentions trained

    checkpoint = tmp_path / "run" / f"checkpoint-{STEPS}"
    reloaded = AutoModelForImageClassification.from_pretrained(checkpoint)
    assert type(reloaded) is family.classifier and reloaded.config.id2label == {0: "red", 1: "blue"}
    batch = processor(images=list(colour_dataset(family.image_size, n=4)["image"]), return_tensors="pt")
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, trainer.model(**batch).logits)
