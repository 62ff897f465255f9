"""Where a fine-tuning dataset comes from, for both tasks: a ``save_to_disk`` folder or a Hub name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import FinetuneInputError

__all__ = ["is_saved_dataset", "load_hub_dataset", "with_train_split"]


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_hub_dataset(name: str, local_forms: str) -> Any:
    """``load_dataset(name)``, with a message naming what ``--dataset`` takes when there is no such dataset (a path
    that does not exist is refused without asking the Hub)."""
    from datasets import load_dataset

    if Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:  # a path, not a Hub name
        raise FinetuneInputError(f"dataset folder {name} does not exist; --dataset takes {local_forms}, or a Hub name")
    try:
        return load_dataset(name)
    except (FileNotFoundError, ConnectionError) as error:  # DatasetNotFoundError is a FileNotFoundError
        raise FinetuneInputError(
            f"cannot load dataset {name!r} ({error}); --dataset takes {local_forms}, or a Hub dataset name "
            "(offline: one already in the datasets cache)"
        ) from None


def with_train_split(data: Any, name_or_path: str) -> Any:
    """``data`` as a ``DatasetDict`` (a bare ``Dataset`` becomes its train split); refused without a train split."""
    from datasets import Dataset, DatasetDict

    if isinstance(data, Dataset):
        data = DatasetDict(train=data)
    if "train" not in data:
        raise FinetuneInputError(f"dataset {name_or_path!r} has no 'train' split (splits: {list(data)})")
    return data
