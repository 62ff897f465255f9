"""The one fine-tuning flow both tasks share, from the seed to the saved model folder and its metrics table.

A task supplies a ``prepare`` function that builds its :class:`TrainingSetup` (model, transformed splits,
collate, metrics, Trainer extras) and, through it, a ``report`` function that turns the finished
:class:`TrainedRun` into its :class:`Report` (result, card fields, table rows, how to save the model).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import torch

from .errors import check_positive
from .outputs import log_metrics_table, refuse_to_overwrite, save_atomically

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData
    from transformers import Trainer, TrainingArguments

__all__ = ["Report", "TrainedRun", "TrainingPlan", "TrainingSetup", "run_finetune"]

_logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class TrainingPlan:
    """The choices every fine-tune shares; checkpoints go to ``output_dir/checkpoints``, the model to ``output_dir/model``."""

    output_dir: Path
    epochs: float
    batch_size: int
    learning_rate: float
    seed: int
    overwrite: bool

    def __post_init__(self) -> None:
        """Refuse, before any work, what the Trainer would fail on late or run as nothing (the command line's
        argument types refuse the same)."""
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("epochs", self.epochs)
        check_positive("learning_rate", self.learning_rate)


@dataclass
class TrainingSetup(Generic[ResultT]):
    """What a task trains: its model, transformed splits, collate and metrics, and how it reports the run.

    ``check_split``'s first example goes through the whole pipeline before any training, so bad data fails
    fast. ``trainer_class`` (default ``transformers.Trainer``) gets ``trainer_kwargs`` on top of the shared
    ones; ``argument_overrides`` replace shared TrainingArguments.
    """

    model: torch.nn.Module
    train_data: Any
    test_data: Any
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    compute_metrics: Callable[..., dict[str, float]]
    report: Callable[[TrainedRun], Report[ResultT]]
    check_split: Literal["train", "test"] = "train"
    trainer_class: type[Trainer] | None = None
    trainer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    argument_overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TrainedRun:
    """A finished Trainer run, its final evaluation (``metrics``, keys ``eval_*``) and where the model goes."""

    setup: TrainingSetup[Any]
    plan: TrainingPlan
    trainer: Trainer
    metrics: dict[str, float]
    train_loss: float
    train_seconds: float
    parameters: int
    saved_to: Path


@dataclass
class Report(Generic[ResultT]):
    """A task's account of a finished run: what the call returns and, on the main process, what is written.

    The model folder gets ``save_model(folder)`` plus a README.md rendered from ``card_template`` with
    ``card_data`` and ``card_fields``; the table logs ``metric_rows`` under ``title``, then the shared rows.
    """

    result: ResultT
    title: str
    metric_rows: Sequence[tuple[str, str]]
    card_data: ModelCardData
    card_template: str
    card_fields: Mapping[str, Any]
    save_model: Callable[[Path], None]


def _training_arguments(
    checkpoints: Path, *, epochs: float, batch_size: int, learning_rate: float, seed: int, **overrides: Any
) -> TrainingArguments:
    """The TrainingArguments both fine-tune commands share: per-epoch evaluation and checkpoints, DDP-ready."""
    from transformers import TrainingArguments

    args = dict(
        output_dir=str(checkpoints),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=0.05,
        lr_scheduler_type="cosine",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        logging_strategy="epoch",
        remove_unused_columns=False,
        report_to=[],
        seed=seed,
        disable_tqdm=False,  # progress bars, whatever transformers' log level
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without a GPU, Trainer/accelerate only sets up multi-process (torchrun, accelerate launch) training
        # when told the run is on the CPU; gloo is the CPU backend.
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,  # every parameter, FDConv attentions included, must get a gradient
    )
    return TrainingArguments(**{**args, **overrides})


def run_finetune(plan: TrainingPlan, prepare: Callable[[], TrainingSetup[ResultT]]) -> ResultT:
    """Seed, refuse an existing model folder, ``prepare()``, train (resuming a checkpoint), evaluate, and on the
    main process save the model folder atomically and log the metrics table; returns the report's result.

    The guard runs before ``prepare`` so that a refused run loads nothing. Under ``torchrun`` every process
    trains and returns its result; only the main one writes.
    """
    from transformers import set_seed

    set_seed(plan.seed)
    saved = refuse_to_overwrite(plan.output_dir, plan.overwrite)
    setup = prepare()
    run = _train_and_evaluate(setup, plan, saved)
    report = setup.report(run)
    if run.trainer.is_world_process_zero():  # distributed runs: one writer
        _publish(run, report)
    return report.result


def _train_and_evaluate(setup: TrainingSetup[Any], plan: TrainingPlan, saved: Path) -> TrainedRun:
    from transformers import Trainer

    checked = setup.train_data if setup.check_split == "train" else setup.test_data
    setup.collate([checked[0]])  # the first example goes through the whole pipeline before any training
    checkpoints = plan.output_dir / "checkpoints"
    args = _training_arguments(
        checkpoints,
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        learning_rate=plan.learning_rate,
        seed=plan.seed,
        **setup.argument_overrides,
    )
    trainer = (setup.trainer_class or Trainer)(
        model=setup.model,
        args=args,
        train_dataset=setup.train_data,
        eval_dataset=setup.test_data,
        data_collator=setup.collate,
        compute_metrics=setup.compute_metrics,
        **setup.trainer_kwargs,
    )
    resume = _has_checkpoint(checkpoints)
    start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    parameters = sum(p.numel() for p in setup.model.parameters())
    return TrainedRun(setup, plan, trainer, metrics, train_output.training_loss, seconds, parameters, saved)


def _has_checkpoint(checkpoints: Path) -> bool:
    """Whether a previous (interrupted) run left a checkpoint to resume from."""
    resume = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    if resume:
        _logger.info("resuming from the last checkpoint in %s (delete that folder to start afresh)", checkpoints)
    return resume


def _publish(run: TrainedRun, report: Report[Any]) -> None:
    """The model folder (model, card) swapped in atomically, then the metrics table with the shared rows."""
    from huggingface_hub import ModelCard

    card = ModelCard.from_template(report.card_data, template_str=report.card_template, **report.card_fields)

    def write(folder: Path) -> None:
        report.save_model(folder)
        card.save(folder / "README.md")

    save_atomically(run.saved_to, write)
    log_metrics_table(
        f"{report.title} ({len(run.setup.test_data)} held-out images):",
        [
            *report.metric_rows,
            ("epochs", f"{run.plan.epochs:g}"),
            ("train seconds", f"{run.train_seconds:.0f}"),
            ("parameters", f"{run.parameters:,}"),
            ("saved to", str(run.saved_to)),
        ],
    )
