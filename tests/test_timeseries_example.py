"""FDConv1d in use: a small time-series classifier, converted from a plain Conv1d network and fine-tuned with the
Hugging Face Trainer. The data are made here: noisy sine waves of two frequencies, at random phase and amplitude."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from fdconv_testing import relative_error
from transformers import Trainer, TrainingArguments

from fdconv_zoo import FDConv1d, convert_to_fdconv

LENGTH = 64
CYCLES = (3, 7)  # per window, one class each


def sine_waves(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` windows (1, LENGTH) labelled by their frequency, with random phase, amplitude and unit-variance noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    t = np.arange(LENGTH) / LENGTH
    phase, amplitude = rng.uniform(0, 2 * math.pi, n), rng.uniform(0.5, 1.5, n)
    waves = amplitude[:, None] * np.sin(2 * math.pi * np.take(CYCLES, labels)[:, None] * t + phase[:, None])
    waves += rng.normal(0.0, 1.0, waves.shape)
    return [
        {"series": torch.tensor(w[None], dtype=torch.float32), "labels": torch.tensor(y)} for w, y in zip(waves, labels)
    ]


class SeriesClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(1, 32, 7, padding=3)  # one input channel: stays a plain convolution
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv1d(32, 48, 3, padding=1), nn.ReLU(), nn.Conv1d(48, 48, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(48, 2)

    def forward(self, series: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.head(self.body(self.stem(series)).mean(-1))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def accuracy(model: nn.Module, data: list[dict[str, torch.Tensor]]) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(torch.stack([d["series"] for d in data]))["logits"]
    return (logits.argmax(-1) == torch.stack([d["labels"] for d in data])).float().mean().item()


def test_converted_conv1d_classifier_fine_tunes_with_trainer(tmp_path):
    torch.manual_seed(0)
    train, held_out = sine_waves(256, seed=0), sine_waves(128, seed=1)
    plain = SeriesClassifier()
    model = SeriesClassifier()
    model.load_state_dict(plain.state_dict())
    assert convert_to_fdconv(model, ["body.*"], kernel_num=8) == ["body.1", "body.3"]
    assert all(
        isinstance(model.body[i], FDConv1d) and model.body[i].use_fdconv and hasattr(model.body[i], "FBM")
        for i in (1, 3)
    )
    x = torch.stack([d["series"] for d in held_out[:8]])
    with torch.no_grad():  # converted exactly: the fine-tuning starts from the plain network's function
        assert relative_error(model.eval()(x)["logits"], plain.eval()(x)["logits"]) <= 1e-5

    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=48,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        logging_steps=8,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert result.global_step == 48 and len(losses) == 6
    assert losses[-1] < 0.5 * losses[0], losses  # from about log(2)
    assert accuracy(trainer.model, held_out) >= 0.9  # chance: 0.5
    for i in (1, 3):  # the dynamic parts trained too
        layer = trainer.model.body[i]
        assert (
            torch.count_nonzero(layer.KSM_Global.kernel_fc.weight) > 0
            and torch.count_nonzero(layer.FBM.freq_weight_conv_list[0].weight) > 0
        )
