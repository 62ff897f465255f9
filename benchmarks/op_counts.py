"""Device-independent costs of running a model: kernels, host synchronisations, bytes and FLOPs per aten op.

What a GPU pays for eager PyTorch is, to first order, fixed per launched op plus the op's roofline time; all
three inputs (how many ops, how many bytes each moves, how many FLOPs each does) are properties of the code
path, not of the device, so they are counted here on the CPU with a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
(under ``fdconv_zoo.layers.planning_as("cuda")`` for the path a GPU takes).

What counts, per aten op that reaches the dispatch mode (below autograd, so forward and backward alike):

- an **op**: every op that is not a view (``OpOverload.is_view``: view, reshape-as-view, transpose, expand,
  detach, ... only make new metadata); each op pays eager PyTorch's dispatch cost;
- a **kernel**: an op that launches work: every op but allocations (``empty``, ``empty_strided``,
  ``empty_like``, ``new_empty``, ``new_empty_strided`` take memory from the caching allocator) and
  ``_unsafe_view`` (the metadata-only half of a ``reshape`` that had to copy: the copy is the kernel);
- a **host synchronisation**: an op tagged ``data_dependent_output`` (``_local_scalar_dense``, i.e. ``.item()``,
  ``equal``, ...) or ``dynamic_output_shape`` (``nonzero``, ``masked_select``, ``unique``, ...): on a GPU the
  host waits for the device to read the value or the output's size. A ``.cpu()`` copy also synchronises on a
  GPU but is an ordinary ``_to_copy`` here (every tensor is on the CPU): such copies are not counted;
- **bytes**: for each tensor argument and each tensor output of a kernel, the bytes it addresses (its elements
  over the dimensions that are not broadcast, stride 0, times the element size). A tensor an op both reads and
  writes (in-place ops, ``out=``) counts twice: once read, once written. A lower bound on DRAM traffic
  (caches can only reduce it for large tensors; an op that reads its input several times counts it once);
- **FLOPs**: the formulas of :mod:`torch.utils.flop_counter` (what ``FlopCounterMode`` counts: matmuls,
  convolutions, attention, their backwards), plus the FFTs, which it does not count, registered here with
  ``register_flop_formula``: FFTW's convention of 5 N log2 N real operations per complex transform of N points
  and 2.5 N log2 N per real-input or real-output transform (N the product of the transformed sizes, real
  length for the real side), times the number of transforms in the batch. Elementwise ops count 0 FLOPs (they
  are bandwidth-bound; the cost model charges their bytes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, register_flop_formula

__all__ = [
    "NO_KERNEL_OPS",
    "Counts",
    "OpCostMode",
    "OpRecord",
    "fft_flops",
    "tensor_bytes",
]

aten = torch.ops.aten
# Ops that dispatch but launch nothing: allocations, and _unsafe_view (a view that the schema does not mark as one,
# the result of reshape after a copy).
NO_KERNEL_OPS = frozenset(
    {
        aten._unsafe_view.default,
        aten.empty.memory_format,
        aten.empty_strided.default,
        aten.empty_like.default,
        aten.new_empty.default,
        aten.new_empty_strided.default,
    }
)
_FFT_OPS = (aten._fft_r2c, aten._fft_c2r, aten._fft_c2c)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes ``t`` addresses: its elements over non-broadcast dimensions (stride != 0) times the element size."""
    if t.numel() == 0:
        return 0
    return math.prod(size for size, stride in zip(t.shape, t.stride()) if stride != 0) * t.element_size()


def fft_flops(signal_sizes: Sequence[int], transforms: int, complex_input_and_output: bool) -> int:
    """FFTW's operation count: 5 N log2 N per complex transform of N points, half that with a real side."""
    n = math.prod(signal_sizes)
    if n <= 1:
        return 0
    per_transform = (5.0 if complex_input_and_output else 2.5) * n * math.log2(n)
    return round(transforms * per_transform)


def _fft_formula(real_side: str | None) -> Callable[..., int]:
    """The formula for an FFT op whose real tensor is its ``real_side`` ("input", "output", None: complex)."""

    def formula(self_shape, dim, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
        shape = out_shape if real_side == "output" else self_shape
        sizes = [shape[d] for d in dim]
        return fft_flops(sizes, math.prod(shape) // max(math.prod(sizes), 1), real_side is None)

    return formula


# flop_registry is torch's own (what FlopCounterMode reads): registering here makes FlopCounterMode count FFTs too.
for _op, _real_side in zip(_FFT_OPS, ("input", "output", None)):
    if _op not in flop_registry:
        register_flop_formula(_op)(_fft_formula(_real_side))


def _is_host_sync(func: torch._ops.OpOverload, args: tuple) -> bool:
    """An op whose output value or size the host must read from the device. Indexing is tagged with a dynamic
    output shape, but only a boolean mask makes it one; integer indices give a size known from their shapes."""
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    return torch.Tag.data_dependent_output in func.tags or torch.Tag.dynamic_output_shape in func.tags


@dataclasses.dataclass
class OpRecord:
    """One kernel: what the cost model needs of it."""

    name: str
    flops: int
    bytes: int
    layer: str | None  # the FDConv-like module it ran under (forward, or backward of its forward)


@dataclasses.dataclass
class Counts:
    """Totals over a set of ops."""

    ops: int = 0
    kernels: int = 0
    host_syncs: int = 0
    bytes: int = 0
    flops: int = 0

    def add(self, other: Counts) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class OpCostMode(TorchDispatchMode):
    """Counts every aten op run inside it (module docstring: what counts), in total and per tracked layer.

    ``layers`` are the modules whose ops are attributed to them (the FDConv layers): an op belongs to a layer
    while the layer's forward runs, and in backward while autograd runs a node that the layer's forward
    created (autograd's sequence numbers of the layer's forward form one range). Gradient accumulation into
    ``.grad`` of the layer's parameters runs outside any such node and is not attributed to it.
    """

    def __init__(self, layers: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.records: list[OpRecord] = []
        self.total = Counts()
        self.per_layer: dict[str, Counts] = {name: Counts() for name in layers or {}}
        self.sync_ops: dict[str, int] = {}
        self._layers = layers or {}
        self._stack: list[str] = []
        self._ranges: list[tuple[int, int, str]] = []  # autograd sequence numbers of each layer's forward
        self._starts: dict[str, int] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> OpCostMode:
        for name, layer in self._layers.items():
            self._hooks.append(layer.register_forward_pre_hook(lambda *_, n=name: self._enter_layer(n)))
            self._hooks.append(layer.register_forward_hook(lambda *_, n=name: self._exit_layer(n), always_call=True))
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        return super().__exit__(*exc)

    def _enter_layer(self, name: str) -> None:
        self._stack.append(name)
        self._starts[name] = torch._C._autograd._get_sequence_nr()

    def _exit_layer(self, name: str) -> None:
        self._stack.pop()
        start = self._starts.pop(name)
        end = torch._C._autograd._get_sequence_nr()
        if end > start:
            self._ranges.append((start, end, name))

    def _current_layer(self) -> str | None:
        if self._stack:
            return self._stack[-1]
        node = torch._C._current_autograd_node()
        if node is None:
            return None
        seq = node._sequence_nr()
        return next((name for start, end, name in self._ranges if start <= seq < end), None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view:
            return out
        counts = Counts(ops=1)
        if func not in NO_KERNEL_OPS:
            counts.kernels = 1
            inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            counts.bytes = sum(tensor_bytes(t) for t in inputs + outputs)
            formula = flop_registry.get(func._overloadpacket)
            counts.flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        if _is_host_sync(func, args):
            counts.host_syncs = 1
            self.sync_ops[str(func)] = self.sync_ops.get(str(func), 0) + 1
        layer = self._current_layer()
        self.total.add(counts)
        if layer is not None:
            self.per_layer[layer].add(counts)
        if counts.kernels:
            self.records.append(OpRecord(str(func._overloadpacket), counts.flops, counts.bytes, layer))
        return out
