"""What staging one variant produced: the record the model card and the publish summary are made from."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

__all__ = ["StagedVariant"]


@dataclass
class StagedVariant:
    """A verified, staged variant: where it is, how close it is to its source, and its cost at ``input_size``."""

    variant: str
    repo_name: str
    folder: str
    source: str
    max_rel_error: float
    tolerance: float
    input_size: tuple[int, int, int]
    params_source: int
    params_fdconv: int
    gflops_source: float  # fdconv_zoo.count_flops at input_size, one image
    gflops_fdconv: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)
