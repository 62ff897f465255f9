"""Figures of FDConv's two frequency mechanisms, drawn on a ``matplotlib.figure.Figure`` with the Agg canvas (never
pyplot): the weight groups' frequency responses, the FBM maps of a layer's input, and both for a model's first
FDConv layer with FBM (the demo's figures)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..layers.fdconv import FDConv
from .analysis import (
    _check_fdconv,
    _check_feature_map,
    cosine_similarity_matrix,
    fbm_lowpass_images,
    fbm_maps,
    group_frequency_responses,
    reference_cosine_similarity,
)
from .png import check_png_target, require_matplotlib, save_png

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "FBM_FIGURE_NAME",
    "GROUP_FIGURE_NAME",
    "first_fbm_layer",
    "plot_fbm_maps",
    "plot_group_frequency_responses",
    "save_demo_figures",
]

_logger = logging.getLogger(__name__)

GROUP_FIGURE_NAME = "group_responses.png"
FBM_FIGURE_NAME = "fbm_maps.png"


def _band_label(k_list: Sequence[int], j: int) -> str:
    """Chebyshev frequency range (cycles/pixel) of band j: [0.5/k_j, 0.5/k_{j-1}), band 0 up to Nyquist."""
    hi = 0.5 if j == 0 else 0.5 / k_list[j - 1]
    if j == len(k_list):
        return f"|f| < {0.5 / k_list[-1]:.3g}"
    return f"{0.5 / k_list[j]:.3g} <= |f| < {hi:.3g}" if j else f"|f| >= {0.5 / k_list[0]:.3g}"


def _colorbar(fig: Figure, image: Any, ax: Any, label: str | None = None) -> None:
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    if label:
        cbar.set_label(label)


def _shifted_extent(rows: int, cols: int) -> list[float]:
    """imshow extent (cycles/sample) of an rfft2 map whose rows are fftshifted (0 frequency centred)."""
    fh = torch.fft.fftshift(torch.fft.fftfreq(rows, dtype=torch.float64))
    fw = torch.fft.rfftfreq(cols, dtype=torch.float64)
    dh, dw = 1.0 / rows, 1.0 / cols
    return [float(fw[0]) - dw / 2, float(fw[-1]) + dw / 2, float(fh[0]) - dh / 2, float(fh[-1]) + dh / 2]


def _default_groups(kernel_num: int, n: int = 4) -> list[int]:
    return sorted({round(i * (kernel_num - 1) / max(n - 1, 1)) for i in range(n)})


def plot_group_frequency_responses(
    layer: FDConv,
    path: str | os.PathLike,
    *,
    groups: Sequence[int] | None = None,
    crop: int = 16,
    noise: float = 0.1,
    title: str | None = None,
    overwrite: bool = False,
    dpi: int = 110,
) -> Path:
    """Figure of the layer's Fourier-disjoint weight groups, written to ``path`` (PNG).

    Top row: (a) which group owns each spectrum bin (the layer's ``frequency_group`` map), (b) the static
    weight's log-magnitude spectrum, (c) the pairwise cosine similarity of the KN group weights, (d) the same for
    KN CondConv-style experts upcycled from the same weight (relative noise ``noise``), the usual alternative.
    Bottom row: (e) the spatial weight images of a few groups (default: lowest, two middle, highest; the first
    ``crop`` x ``crop`` channels of the (Cout·k, Cin·k) weight image). Returns the path.
    """
    matplotlib, Figure, _ = require_matplotlib()
    layer = _check_fdconv(layer)
    path = check_png_target(path, overwrite)  # fail before the work
    kn, k = layer.kernel_num, layer.kernel_size[0]
    groups = _default_groups(kn) if groups is None else [int(g) for g in groups]
    if not groups or any(not 0 <= g < kn for g in groups):
        raise ValueError(
            f"groups must be a non-empty list of group indices in 0..{kn - 1} (kernel_num={kn}), got {groups}"
        )
    if crop < 1:
        raise ValueError(f"crop (channels shown per axis) must be >= 1, got {crop}")
    responses = group_frequency_responses(layer, as_image=True).cpu()  # (KN, rows, cols)
    cosine = cosine_similarity_matrix(responses)
    reference = reference_cosine_similarity(layer, noise=noise)
    rows, cols = responses.shape[1:]
    group_map = torch.fft.fftshift(layer.frequency_group.cpu(), dim=0)
    magnitude = torch.fft.fftshift(torch.fft.rfft2(responses.sum(0)).abs(), dim=0)
    extent = _shifted_extent(rows, cols)

    ncols = max(4, len(groups))
    fig = Figure(figsize=(4.6 * ncols, 8.6), layout="constrained")
    grid = fig.add_gridspec(2, ncols)
    fig.suptitle(
        title
        or f"FDConv Fourier-disjoint weights: {layer.in_channels}->{layer.out_channels}, {k}x{k}, kernel_num={kn}"
        + (f", param_ratio={layer.param_ratio}" if layer.param_ratio != 1 else ""),
        fontsize=13,
    )

    ax = fig.add_subplot(grid[0, 0])
    im = ax.imshow(
        group_map.numpy(),
        origin="lower",
        extent=extent,
        aspect="auto",
        interpolation="nearest",
        cmap=matplotlib.colormaps["viridis"].resampled(kn),
        vmin=-0.5,
        vmax=kn - 0.5,
    )
    ax.set(title="(a) group of each spectrum bin", xlabel="column frequency (cycles/sample)", ylabel="row frequency")
    _colorbar(fig, im, ax, "group (0 = lowest |f|)")

    ax = fig.add_subplot(grid[0, 1])
    im = ax.imshow(
        torch.log10(magnitude + magnitude.max() * 1e-6).numpy(),
        origin="lower",
        extent=extent,
        aspect="auto",
        interpolation="nearest",
        cmap="magma",
    )
    boundaries = [g + 0.5 for g in range(kn - 1)]
    if boundaries and kn <= 16:  # more boundaries than that turn into a grey smear
        ax.contour(group_map.numpy(), levels=boundaries, extent=extent, colors="cyan", linewidths=0.7, origin="lower")
    ax.set(
        title="(b) static weight spectrum" + (", group edges" if 1 < kn <= 16 else ""),
        xlabel="column frequency (cycles/sample)",
        ylabel="row frequency",
    )
    _colorbar(fig, im, ax, "log10 |rfft2(weight image)|")

    off = (cosine - torch.eye(kn, dtype=cosine.dtype)).abs().max().item() if kn > 1 else 0.0
    off_ref = (reference - torch.eye(kn, dtype=reference.dtype)).abs().max().item() if kn > 1 else 0.0
    ref_mean = ((reference.sum() - reference.diagonal().sum()) / max(kn * kn - kn, 1)).item()
    for col, matrix, name in (
        (2, cosine, f"(c) FDConv groups: cosine\nmax |off-diagonal| = {off:.1e}"),
        (
            3,
            reference,
            f"(d) {kn} upcycled experts (CondConv-style,\nweight + {noise:g}·std noise): mean off-diag. {ref_mean:.3f}",
        ),
    ):
        ax = fig.add_subplot(grid[0, col])
        im = ax.imshow(matrix.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set(title=name, xlabel="group / expert", ylabel="group / expert")
        _colorbar(fig, im, ax, "cosine similarity")
    _logger.debug("max |off-diagonal| cosine: FDConv %.3g, upcycled experts %.3g", off, off_ref)

    n_show = min(crop, layer.out_channels) * k, min(crop, layer.in_channels) * k
    for col, g in enumerate(groups):
        ax = fig.add_subplot(grid[1, col])
        image = responses[g, : n_show[0], : n_show[1]]
        bound = max(image.abs().max().item(), 1e-30)
        im = ax.imshow(image.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
        energy = (responses[g].square().sum() / responses.square().sum()).item()
        ax.set(
            title=f"(e) group {g}: weight image\n({energy:.1%} of the energy)",
            xlabel=f"input channel x {k} (first {n_show[1] // k})",
            ylabel=f"output channel x {k} (first {n_show[0] // k})",
        )
        _colorbar(fig, im, ax, "weight")
    return save_png(fig, path, overwrite, dpi)


def plot_fbm_maps(
    layer: FDConv,
    x: torch.Tensor,
    path: str | os.PathLike,
    *,
    channel: int | None = None,
    title: str | None = None,
    overwrite: bool = False,
    dpi: int = 110,
) -> Path:
    """Figure of the frequency band modulation of one input ``x`` ((1, C, H, W) or (C, H, W)), written to ``path``.

    Top row: one input channel, its FBM frequency bands (high to low) and the FBM output; bottom row: the
    attention map that multiplies each band (the layer's own ``FBM._attention_maps``; 1 = unchanged, drawn
    white). ``channel`` defaults to the input channel with the largest variance. Returns the path.
    """
    matplotlib, Figure, _ = require_matplotlib()
    layer = _check_fdconv(layer, need_fbm=True)
    x = _check_feature_map(layer, x)
    if x.shape[0] != 1:
        raise ValueError(f"plot_fbm_maps draws one sample; pass x[:1] (got a batch of {x.shape[0]})")
    path = check_png_target(path, overwrite)
    fbm = layer.FBM
    with torch.no_grad():
        maps = fbm_maps(layer, x)[0].float().cpu()  # (n_att, G, H, W)
        lows = fbm_lowpass_images(layer, x)[0].float().cpu()  # (n, C, H, W)
        out = fbm(x)[0].float().cpu()
    xs = x[0].float().cpu()
    if channel is None:
        channel = int(xs.flatten(1).var(1).argmax())
    if not 0 <= channel < xs.shape[0]:
        raise ValueError(f"channel must be in 0..{xs.shape[0] - 1}, got {channel}")
    group = channel // (xs.shape[0] // fbm.spatial_group)  # the attention group this channel belongs to
    n = len(fbm.k_list)
    previous = torch.cat([xs[None], lows[:-1]])[:, channel]
    bands = list(previous - lows[:, channel]) + [lows[-1, channel]]  # band 0 (highest) .. lowest

    ncols = n + 2
    fig = Figure(figsize=(3.9 * ncols, 7.4), layout="constrained")
    grid = fig.add_gridspec(2, ncols)
    fig.suptitle(
        title
        or f"FDConv frequency band modulation: input {tuple(x.shape[1:])}, channel {channel}, "
        f"k_list={fbm.k_list}, act={fbm.act}",
        fontsize=13,
    )

    def show(r: int, c: int, img: torch.Tensor, name: str, cmap: str, label: str, **kw: Any) -> None:
        ax = fig.add_subplot(grid[r, c])
        im = ax.imshow(img.numpy(), cmap=cmap, interpolation="nearest", **kw)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
        _colorbar(fig, im, ax, label)

    def symmetric(img: torch.Tensor) -> dict[str, float]:
        bound = max(img.abs().max().item(), 1e-30)
        return dict(vmin=-bound, vmax=bound)

    show(0, 0, xs[channel], f"input, channel {channel}", "viridis", "value")
    show(1, 0, out[channel], f"FBM output, channel {channel}", "viridis", "value")
    att_max = float(fbm.spatial_group) if fbm.act == "softmax" else 2.0
    TwoSlopeNorm = matplotlib.colors.TwoSlopeNorm

    for j in range(n + 1):
        show(
            0,
            j + 1,
            bands[j],
            f"band {j}: {_band_label(fbm.k_list, j)}" + (" (lowest)" if j == n else ""),
            "RdBu_r",
            "value",
            **symmetric(bands[j]),
        )
        if j < maps.shape[0]:
            amap = maps[j, group]
            lo, hi = amap.min().item(), amap.max().item()
            norm = TwoSlopeNorm(vcenter=1.0, vmin=min(0.0, lo), vmax=max(att_max, hi))
            show(
                1,
                j + 1,
                amap,
                f"attention on band {j}\nrange [{lo:.3g}, {hi:.3g}]",
                "RdBu_r",
                "attention (1 = neutral)",
                norm=norm,
            )
        else:
            ax = fig.add_subplot(grid[1, j + 1])
            ax.axis("off")
            ax.text(0.5, 0.5, "lowest band:\nnot modulated\n(lowfreq_att=False)", ha="center", va="center", fontsize=11)
    return save_png(fig, path, overwrite, dpi)


def first_fbm_layer(model: nn.Module) -> tuple[str, FDConv]:
    for name, module in model.named_modules():
        if isinstance(module, FDConv) and module.use_fdconv and hasattr(module, "FBM"):
            return name, module
    raise ValueError(
        f"{type(model).__name__} has no FDConv layer with frequency band modulation (a 3x3 FDConv with use_fdconv True)"
    )


def save_demo_figures(
    model: nn.Module, image: torch.Tensor, out_dir: str | os.PathLike, *, overwrite: bool = False
) -> list[Path]:
    """Write ``group_responses.png`` and ``fbm_maps.png`` for the first 3x3 FDConv (with FBM) of ``model``.

    ``image`` ((1, 3, H, W) or (3, H, W), preprocessed as the model expects) is run through the model in eval
    mode without gradients, and a forward hook captures that layer's input for the FBM figure; the model's
    train/eval mode is restored afterwards. Refuses to replace existing figures unless ``overwrite=True``
    (checked for both files before either is written). Returns the two paths.
    """
    out_dir = Path(out_dir)
    name, layer = first_fbm_layer(model)
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1, C, H, W) or (C, H, W), got {tuple(image.shape)}")
    targets = [out_dir / GROUP_FIGURE_NAME, out_dir / FBM_FIGURE_NAME]
    for target in targets:
        check_png_target(target, overwrite)
    require_matplotlib()  # fail before running the model

    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        captured.append(args[0].detach())

    handle = layer.register_forward_hook(hook)
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        with torch.no_grad():
            model(image.to(param.device) if param is not None else image)
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        raise RuntimeError(f"the forward pass did not reach layer {name!r}; check that the model uses it")
    x = captured[0]
    _logger.info("demo figures for layer %s (input %s)", name, tuple(x.shape))
    return [
        plot_group_frequency_responses(
            layer,
            targets[0],
            title=f"{name}: FDConv Fourier-disjoint weights "
            f"({layer.in_channels}->{layer.out_channels}, {layer.kernel_size[0]}x{layer.kernel_size[0]}, "
            f"kernel_num={layer.kernel_num})",
            overwrite=overwrite,
        ),
        plot_fbm_maps(
            layer,
            x,
            targets[1],
            title=f"{name}: frequency band modulation of its input {tuple(x.shape[1:])}",
            overwrite=overwrite,
        ),
    ]
