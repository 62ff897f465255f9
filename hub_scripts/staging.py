"""Convert, verify and stage one variant as a ready-to-upload Hub folder.

load the source weights -> build the FDConv model (converted at load time by the library's own
loaders) and the source model -> verify that both compute the same function on a fixed probe batch ->
write model.safetensors (metadata names the source and the conversion), config files and the card.
Nothing is written unless verification passes; the folder appears atomically.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import fdconv_zoo

from .cards import render_card
from .staged import StagedVariant
from .variants import Variant

__all__ = ["VerificationError", "load_source_state_dict", "stage_variant"]

_logger = logging.getLogger(__name__)

PROBE_BATCH = 2
PROBE_SEED = 0


class VerificationError(RuntimeError):
    """The converted model does not compute its source model's function."""


def load_source_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights from a local file: safetensors, or a legacy pickle through ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source checkpoint {path} does not exist (pass a .safetensors, .pth or .bin file)")
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


# ------------------------------------------------------------------------------------------ model pairs
def _timm_pair(variant: Variant, source_checkpoint: Path | None) -> tuple[nn.Module, nn.Module, tuple[int, int, int]]:
    import timm

    overlay: dict[str, Any] | None = None
    if variant.native_class:  # the source is a transformers checkpoint (a folder), e.g. MiT from nvidia/mit-b*
        _check_transformers_folder(source_checkpoint)
        source = variant.load_class("native_class").from_pretrained(str(source_checkpoint or variant.source_repo))
        if source_checkpoint is not None:
            overlay = dict(state_dict=load_source_state_dict(source_checkpoint / "model.safetensors"))
    else:
        source_name = variant.source_repo.removeprefix("timm/")  # '<base>.<tag>'
        if source_checkpoint is not None:
            overlay = dict(state_dict=load_source_state_dict(source_checkpoint))
        try:
            source = timm.create_model(source_name, pretrained=True, pretrained_cfg_overlay=_copy_overlay(overlay))
        except RuntimeError as e:
            raise ValueError(f"the source checkpoint does not fit {source_name}: {e}") from e
    model = timm.create_model(variant.name, pretrained=True, pretrained_cfg_overlay=_copy_overlay(overlay))
    input_size = tuple(model.pretrained_cfg["input_size"])
    return source, model, input_size


def _copy_overlay(overlay: dict[str, Any] | None) -> dict[str, Any] | None:
    """timm filters may edit the state dict in place; give each model its own."""
    if overlay is None:
        return None
    return dict(state_dict=dict(overlay["state_dict"]))


def _check_transformers_folder(source_checkpoint: Path | None) -> None:
    if source_checkpoint is not None and not (source_checkpoint / "config.json").is_file():
        raise ValueError(
            f"this variant's source is a transformers checkpoint: pass a folder with config.json and model.safetensors, got {source_checkpoint}"
        )


def _transformers_pair(
    variant: Variant, source_checkpoint: Path | None
) -> tuple[nn.Module, nn.Module, tuple[int, int, int]]:
    _check_transformers_folder(source_checkpoint)
    source_ref = str(source_checkpoint) if source_checkpoint is not None else variant.source_repo
    source = variant.load_class("native_class").from_pretrained(source_ref)
    model = variant.load_class("fdconv_class").from_pretrained(source_ref)
    size = source.config.image_size if isinstance(getattr(source.config, "image_size", None), int) else 224
    return source, model, (source.config.num_channels, size, size)


# ---------------------------------------------------------------------------------------- measurements
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def probe_batch(input_size: tuple[int, int, int]) -> torch.Tensor:
    """The fixed verification input: normalised-image statistics, seeded."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn(PROBE_BATCH, *input_size, generator=gen)


@torch.no_grad()
def verify(source: nn.Module, model: nn.Module, input_size: tuple[int, int, int], tolerance: float) -> float:
    """Max relative error (max |difference| / max |source|) of the outputs on the probe batch, eval mode."""
    x = probe_batch(input_size)
    expected = _logits(source.eval(), x).double()
    actual = _logits(model.eval(), x).double()
    if actual.shape != expected.shape:
        raise VerificationError(f"output shapes differ: FDConv {tuple(actual.shape)} vs source {tuple(expected.shape)}")
    error = ((actual - expected).abs().max() / expected.abs().max()).item()
    if not error <= tolerance:
        raise VerificationError(
            f"converted model differs from its source: max relative error {error:.2e} > {tolerance:.0e}"
        )
    return error


# -------------------------------------------------------------------------------------------- staging
def _stamp_safetensors(path: Path, metadata: dict[str, str]) -> None:
    """Add our provenance to the weights file's metadata (the loaders ignore unknown keys)."""
    with safe_open(str(path), framework="pt") as f:
        old = f.metadata() or {}
    save_file(load_file(path), path, metadata={**old, **metadata})


def _save_folder(variant: Variant, model: nn.Module, folder: Path, source_checkpoint: Path | None) -> None:
    if variant.library == "timm":
        fdconv_zoo.save_fdconv_for_hf(model, folder)
        return
    from transformers import AutoImageProcessor

    model.save_pretrained(folder)
    processor_source = str(source_checkpoint) if source_checkpoint is not None else variant.source_repo
    AutoImageProcessor.from_pretrained(processor_source).save_pretrained(folder)


def stage_variant(
    variant: Variant,
    out_dir: Path,
    *,
    org: str,
    source_checkpoint: Path | None = None,
    tolerance: float = 1e-4,
    overwrite: bool = False,
) -> StagedVariant:
    """Stage ``variant`` into ``out_dir/<repo name>``; raises VerificationError (writing nothing) on a mismatch."""
    target = out_dir / variant.repo_name
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass --overwrite to replace it")
    pair = _timm_pair if variant.library == "timm" else _transformers_pair
    source, model, input_size = pair(variant, source_checkpoint)
    error = verify(source, model, input_size, tolerance)
    staged = StagedVariant(
        variant=variant.name,
        repo_name=variant.repo_name,
        folder=str(target),
        source=variant.source_repo
        if source_checkpoint is None
        else f"{variant.source_repo} (local file {source_checkpoint.name})",
        max_rel_error=error,
        tolerance=tolerance,
        input_size=input_size,
        params_source=fdconv_zoo.count_parameters(source),
        params_fdconv=fdconv_zoo.count_parameters(model),
        gflops_source=fdconv_zoo.count_flops(source, input_size).gflops,
        gflops_fdconv=fdconv_zoo.count_flops(model, input_size).gflops,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{variant.repo_name}.", dir=out_dir))
    try:
        _save_folder(variant, model, tmp, source_checkpoint)
        _stamp_safetensors(
            tmp / "model.safetensors",
            {
                "fdconv_zoo_version": fdconv_zoo.__version__,
                "fdconv_source": variant.source_repo,
                "fdconv_conversion": "exact spectral conversion of the source weights (fdconv_zoo.convert_state_dict); attentions neutral",
                "fdconv_verified_max_rel_error": f"{error:.3e}",
            },
        )
        render_card(variant, staged, org=org).save(tmp / "README.md")
        umask = os.umask(0)
        os.umask(umask)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp and some writers use 0o700/0o600
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info("staged %s in %s (max rel. error %.1e)", variant.name, target, error)
    return staged
