"""ONNX export of FDConv models, and a check of the exported file against PyTorch with onnxruntime.

``torch.onnx.export`` (the ``torch.export``-based exporter, torch's default since 2.9) has no inverse real
FFT and no convolution whose group count is the batch size; under export FDConv switches to equivalent
matrix-product and batch-independent forms (``inverse_weight_spectrum``, ``FDConv.forward``), so a whole
model exports with a dynamic batch axis. Needs the ``onnx`` extra: ``pip install 'fdconv-zoo[onnx]'``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import InputError, MissingExtraError, MissingInputError, OutputExistsError
from .output_paths import check_writable

__all__ = [
    "DEFAULT_OPSET",
    "ONNX_TOLERANCE",
    "check_onnx_output",
    "export_onnx",
    "load_state_dict_file",
    "load_timm_model",
    "model_input_size",
    "verify_onnx",
]

_logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # the opset of torch's ONNX function library; lower ones go through a lossy version converter
ONNX_TOLERANCE = 1e-4  # max relative error of onnxruntime against PyTorch (float32) that verify_onnx accepts


def _require(module: str) -> Any:
    """Import an optional dependency, or say which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"ONNX export needs {module!r}: pip install 'fdconv-zoo[onnx]' (onnx, onnxruntime, onnxscript)"
        ) from err


def _input_shape(input_size: int | Sequence[int]) -> tuple[int, int, int]:
    shape = (3, int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_size must be (channels, height, width) or one image side, got {input_size!r}")
    return shape  # type: ignore[return-value]


def check_onnx_output(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``path`` as a ``Path`` when an export may write it: the ONNX extra is installed, the path can be written,
    and it does not exist yet unless ``overwrite``. Cheap, so callers run it before building the model."""
    for module in ("onnxscript", "onnxruntime"):
        _require(module)
    path = check_writable(path, "--out", folder=False)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} exists; pass --overwrite (overwrite=True) to replace it, or choose another --out"
        )
    return path


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: int | Sequence[int],
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    overwrite: bool = False,
    full_optimization: bool = False,
) -> Path:
    """Export ``model`` (eval mode, image input ``(B, *input_size)``) to the ONNX file ``path``; returns it.

    ``input_size`` is ``(channels, height, width)`` (or one side of an RGB square). The batch axis stays
    symbolic unless ``dynamic_batch=False``; height and width are fixed, as FDConv's band masks and the
    model's pooling depend on them. Identical constant tensors (the DFT matrices shared by layers of one
    shape) are stored once. The file is written to a temporary sibling first and then moved into place,
    so ``path`` is never half written; an existing ``path`` is replaced only with ``overwrite=True``.

    The graph is cleaned with constant folding and dead-node removal only; onnxruntime applies its own
    optimisations when it loads the file. ``full_optimization=True`` runs onnxscript's full optimiser
    (torch's default), whose pattern rewriter is quadratic in the graph size: about 20 s for a tiny FDConv
    ResNet-18, unfinished after 9 minutes for ResNet-50 (2 CPU cores), for a smaller file and the same speed.
    """
    path = check_onnx_output(path, overwrite=overwrite)
    if path.suffix != ".onnx":
        _logger.warning("%s does not end in .onnx", path)
    shape = _input_shape(input_size)
    param = next(model.parameters(), None)
    # Batch 2 (torch.export specialises size 1); a private generator leaves the caller's random state alone.
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)).to(
        param.device if param is not None else "cpu"
    )
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _quiet_exporter_logs():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                input_names=["pixel_values"],
                verbose=False,
                optimize=full_optimization,
            )
            if not full_optimization:
                from onnxscript import optimizer

                optimizer.fold_constants(program.model)
                optimizer.remove_unused_nodes(program.model)
    finally:
        model.train(was_training)
    dropped = _deduplicate_initializers(program.model)
    _logger.debug("merged %d duplicate constants", dropped)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        program.save(staging, external_data=False)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    _logger.info(
        "exported %s to %s (%.1f MB, opset %d)", type(model).__name__, path, path.stat().st_size / 2**20, opset
    )
    return path


def _deduplicate_initializers(model: Any) -> int:
    """Store equal constants once: every FDConv layer of one shape lifts its own copy of the DFT matrices, and
    torch's own pass merges only tensors of up to 1024 elements. Returns the number of constants dropped."""
    import hashlib

    import numpy as np

    graph = model.graph
    kept: dict[tuple[Any, tuple[int, ...], str], Any] = {}
    dropped = 0
    for value in tuple(graph.initializers.values()):
        const = value.const_value
        if const is None or value.is_graph_input() or value.is_graph_output():
            continue
        data = np.ascontiguousarray(const.numpy())  # a lifted torch constant may be a strided view (and 0-d -> 1-d)
        key = (const.dtype, tuple(const.shape), hashlib.sha256(data.tobytes()).hexdigest())
        if key in kept:
            value.replace_all_uses_with(kept[key])
            graph.initializers.pop(value.name)
            dropped += 1
        else:
            kept[key] = value
    return dropped


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """The exporter's passes log every rewrite at INFO; keep a CLI's INFO output to our own lines."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # torch 2.13's own pytree deprecation, raised inside torch.export
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _outputs(value: Any) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, a tuple/list, or a dict/ModelOutput), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _outputs(v)]
    raise TypeError(f"cannot compare a model output of type {type(value).__name__}")


def verify_onnx(
    path: str | os.PathLike, model: nn.Module, batch_sizes: Sequence[int] = (1, 3), *, seed: int = 0
) -> float:
    """Largest relative error ``max|onnx - torch| / max|torch|`` of onnxruntime (CPU) against ``model`` in eval
    mode, over random inputs of each batch size (which also checks that the batch axis is dynamic)."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its shape-merge warnings on exported graphs are noise
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    image_shape = inp.shape[1:]
    if not all(isinstance(s, int) for s in image_shape):
        raise ValueError(f"{path}: input {inp.name!r} has shape {inp.shape}; only the batch axis may be symbolic")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for batch in batch_sizes:
            x = torch.randn(batch, *image_shape, generator=gen)
            with torch.no_grad():
                expected = _outputs(model(x.to(device)))
            got = session.run(None, {inp.name: x.numpy()})
            if len(got) != len(expected):
                raise ValueError(f"{path} has {len(got)} outputs, the model {len(expected)}")
            for actual, ref in zip(got, expected):
                ref = ref.detach().double().cpu()
                if tuple(actual.shape) != tuple(ref.shape):
                    raise ValueError(
                        f"{path}: output shape {tuple(actual.shape)} at batch {batch}, the model gives {tuple(ref.shape)}"
                    )
                error = (
                    (torch.from_numpy(actual).double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)
                ).item()
                _logger.info("batch %d: max relative error %.2e (onnxruntime vs PyTorch)", batch, error)
                worst = max(worst, error)
    finally:
        model.train(was_training)
    return worst


_CHECKPOINT_WRAPPERS = ("state_dict", "model", "model_state_dict")
_LEGACY_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or, for legacy files, ``torch.load(weights_only=True)`` (no pickled code).

    Training checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``) and DDP's
    ``module.`` prefixes are unwrapped.
    """
    path = _existing_checkpoint(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except SafetensorError as err:
            raise InputError(f"checkpoint {path} is not a readable .safetensors file ({err})") from err
    elif path.suffix in _LEGACY_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:  # objects other than tensors: refused, never unpickled
            raise InputError(
                f"checkpoint {path}: Weights only load failed, it holds objects other than tensors "
                f"({str(err).splitlines()[-1].strip()}); save the model's state_dict() as .safetensors"
            ) from err
        except (RuntimeError, EOFError) as err:
            raise InputError(f"checkpoint {path} is not a readable torch file ({err}); is it complete?") from err
        for key in _CHECKPOINT_WRAPPERS:
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    else:
        raise InputError(
            f"checkpoint {path}: expected a .safetensors file (or a legacy {'/'.join(_LEGACY_SUFFIXES)} state dict)"
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"checkpoint {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_timm_model(model_name: str, checkpoint: str | os.PathLike | None = None, **model_kwargs: Any) -> nn.Module:
    """The timm model to export: ``arch`` (random init, or the weights of ``checkpoint``), ``arch.tag``,
    ``local-dir:PATH`` or ``hf-hub:REPO`` (pretrained weights, timm's loader). A checkpoint of the plain
    architecture (e.g. ``resnet50``'s) is converted to FDConv exactly (``convert_state_dict``). Bad names,
    missing checkpoints and checkpoints of another architecture raise :class:`InputError`."""
    import timm
    from huggingface_hub.errors import EntryNotFoundError

    import fdconv_zoo  # noqa: F401  (registers the FDConv architectures)

    prefixed = model_name.startswith(("local-dir:", "hf-hub:"))
    if not prefixed:
        arch, _, tag = model_name.partition(".")
        if arch not in timm.list_models():
            raise InputError(f"unknown timm model {arch!r}; FDConv models: {', '.join(timm.list_models('*fdconv*'))}")
        if tag and model_name not in timm.list_pretrained(f"{arch}.*"):
            tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
            raise InputError(f"unknown pretrained tag {model_name!r}; pretrained tags of {arch}: {tags}")
        if tag and checkpoint is not None:
            raise InputError(
                f"{model_name!r} names pretrained weights and a checkpoint was given too; pass {arch!r} with the checkpoint"
            )
    elif model_name.startswith("local-dir:"):
        _existing_checkpoint(model_name.removeprefix("local-dir:"), folder=True)
    if checkpoint is not None:
        _existing_checkpoint(checkpoint)  # before building the model
    pretrained = checkpoint is None and (prefixed or "." in model_name)
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **model_kwargs)
    except TypeError as err:  # a --model-arg the architecture does not take
        if not model_kwargs:
            raise
        raise InputError(f"--model-arg {', '.join(model_kwargs)}: {err}") from err
    except (OSError, EntryNotFoundError) as err:  # weights not in the cache (offline), no such repo or file
        if not pretrained:
            raise
        raise InputError(
            f"cannot load the pretrained weights of {model_name!r}: {str(err).splitlines()[0]}; offline "
            "(HF_HUB_OFFLINE=1) they must already be in the Hugging Face cache, or pass --checkpoint FILE"
        ) from err
    if checkpoint is not None:
        _load_checkpoint(model, model_name, checkpoint)
    elif not pretrained:
        _logger.warning(
            "%s: no weights given, exporting a randomly initialised model (use ARCH.TAG, local-dir:, hf-hub: or --checkpoint)",
            model_name,
        )
    return model


def _existing_checkpoint(path: str | os.PathLike, *, folder: bool = False) -> Path:
    path = Path(path)
    if not (path.is_dir() if folder else path.is_file()):
        kind = "folder" if folder else "file"
        raise MissingInputError(f"checkpoint {path} does not exist (no such {kind}); check the path")
    return path


def _load_checkpoint(model: nn.Module, model_name: str, checkpoint: str | os.PathLike) -> None:
    """``checkpoint``'s weights (converted to FDConv where they are plain) into ``model``, every tensor set.

    A checkpoint of another architecture is refused with counts and the first keys of what does not fit."""
    from .conversion import convert_state_dict

    fix = "is it a checkpoint of this architecture? A fine-tuned head needs --model-arg num_classes=N"
    try:
        state = convert_state_dict(load_state_dict_file(checkpoint), model)
    except InputError:
        raise
    except ValueError as err:  # a conv weight of another shape
        raise InputError(f"checkpoint {checkpoint} does not fit {model_name}: {err}; {fix}") from err
    own = model.state_dict()
    problems = []
    for what, keys in (
        ("missing", [k for k in own if k not in state]),
        ("unknown to the model", [k for k in state if k not in own]),
        ("of another shape", [k for k in state if k in own and state[k].shape != own[k].shape]),
    ):
        if keys:
            problems.append(f"{len(keys)} tensors {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    if problems:
        raise InputError(f"checkpoint {checkpoint} does not fit {model_name}: {'; '.join(problems)}; {fix}")
    model.load_state_dict(state)


def model_input_size(model: nn.Module, image_size: int | None = None) -> tuple[int, int, int]:
    """``(channels, height, width)`` from the model's pretrained config, square ``image_size`` if given."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    if image_size is not None:
        height = width = image_size
    return _input_shape((channels, height, width))
