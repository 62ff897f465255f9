"""Values a layer derives from its shapes or parameters, kept on the module between eager forwards.

Input-independent constants (band masks, index maps, coefficient matrices) are keyed by what they are made from
(shape, dtype, device); values derived from parameters (a rescaled spectrum, folded attention weights) are keyed
by the parameters' identity and ``_version`` counters as well, which every in-place change bumps (optimiser
steps, ``load_state_dict``'s ``copy_``, ``nn.init``), so no stale value survives a change. Tensors are built
outside inference mode and without autograd, so a later training forward may use them. Traced code (compile,
export) never reads or fills the cache: there the same values are built in the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["cached", "constant", "parameter_key"]

_ATTRIBUTE = "_fdconv_constants"


def parameter_key(*tensors: torch.Tensor | None) -> tuple:
    """Identity of the current values of ``tensors``: storage, version counter, dtype and device of each."""
    return tuple(
        None if t is None else (t.untyped_storage().data_ptr(), t.storage_offset(), t._version, t.dtype, t.device)
        for t in tensors
    )


def cached(module: nn.Module, name: str, key: Hashable, build: Callable[[], Any], maxsize: int = 1) -> Any:
    """``build()``, kept on ``module`` under ``name`` for ``key``; at most ``maxsize`` keys per name (the oldest
    is dropped), so values of parameters that changed are freed, not accumulated."""
    store: dict[str, dict[Hashable, Any]] = module.__dict__.setdefault(_ATTRIBUTE, {})
    entries = store.setdefault(name, {})
    if key in entries:
        return entries[key]
    with torch.inference_mode(False), torch.no_grad():
        value = build()
    while len(entries) >= maxsize:
        entries.pop(next(iter(entries)))
    entries[key] = value
    return value


def constant(
    module: nn.Module,
    name: str,
    key: Hashable | Callable[[], Hashable],
    build: Callable[[], Any],
    reuse: bool,
    maxsize: int = 8,
) -> Any:
    """``build()``, from the cache where ``reuse`` (eager forwards on plain tensors), else made afresh (traced
    graphs, where it becomes part of the graph; forwards that record autograd through parameters it reads).
    A callable ``key`` is called only where the cache is used (tracers cannot read storage pointers)."""
    if not reuse:
        return build()
    return cached(module, name, key() if callable(key) else key, build, maxsize)
