"""The account of a COCO-scored fine-tune (detection, instance segmentation): one table, card and saved folder.

Both tasks report COCO summary scores and a per-class AP, save the model with its image processor and a
``metrics.json``, and fill the same card fields; only the scores, the card and the per-class name differ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .trainer_flow import Report, TrainedRun

__all__ = ["backbone_lr", "coco_report"]

ResultT = TypeVar("ResultT")


def backbone_lr(run: TrainedRun) -> float:
    """The backbone's learning rate as configured (not as scheduled): the lowest of the parameter groups."""
    return min(group.get("initial_lr", group["lr"]) for group in run.trainer.optimizer.param_groups)


def coco_report(
    run: TrainedRun,
    result: ResultT,
    *,
    title: str,
    model_name: str,
    dataset_label: str,
    scores: Mapping[str, float],
    per_class: Mapping[str, float],
    per_class_name: str,
    per_class_key: str,
    processor: Any,
    image_size: int,
    train_images: int,
    freezing: str,
    card_data: Any,
    card_template: str,
    **card_fields: Any,
) -> Report[ResultT]:
    """The report of ``run``: ``per_class_name`` labels the per-class AP in the table ("AP", "mask AP"),
    ``per_class_key`` names it in ``metrics.json``; ``card_fields`` adds task-specific fields to the card's."""
    plan = run.plan
    eval_loss = run.metrics["eval_loss"]
    fields = dict(
        model_name=title,
        base_model=model_name,
        dataset=dataset_label,
        train_images=train_images,
        epochs=f"{plan.epochs:g}",
        batch_size=plan.batch_size,
        lr=f"{plan.learning_rate:g}",
        backbone_lr=f"{backbone_lr(run):g}",
        image_size=image_size,
        freezing=freezing,
        test_examples=len(run.setup.test_data),
        summary="\n".join(f"| {key} | {value:.4f} |" for key, value in scores.items()),
        eval_loss=f"{eval_loss:.4f}",
        parameters=f"{run.parameters:,}",
        per_class="\n".join(f"| {name} | {value:.4f} |" for name, value in per_class.items()),
        **card_fields,
    )
    rows = [
        *((key, f"{value:.4f}") for key, value in scores.items()),
        ("eval loss", f"{eval_loss:.4f}"),
        ("train loss", f"{run.train_loss:.4f}"),
        *((f"{per_class_name} {name}", f"{value:.4f}") for name, value in per_class.items()),
    ]
    metrics_json = {**scores, per_class_key: dict(per_class), "eval_loss": eval_loss, "dataset": dataset_label}

    def save_model(folder: Path) -> None:
        run.trainer.model.save_pretrained(folder)
        processor.save_pretrained(folder)
        (folder / "metrics.json").write_text(json.dumps(metrics_json, indent=2) + "\n")

    return Report(result, title, rows, card_data, card_template, fields, save_model)
