"""Figures of FDConv's two frequency mechanisms: the Fourier-disjoint weight groups (FDW) and the
frequency band modulation (FBM) of the input.

The tensor functions (:func:`group_frequency_responses`, :func:`group_cosine_similarity`,
:func:`fbm_maps`, ...) need only torch. The plotting functions need matplotlib, an optional dependency
(``pip install 'fdconv-zoo[viz]'``), imported when first used. They draw on a ``matplotlib.figure.Figure``
with the Agg canvas, never through pyplot, so they neither open windows nor change the caller's
matplotlib backend. PNGs are written atomically and an existing file is replaced only with
``overwrite=True``.

This module is not imported by ``fdconv_zoo`` itself (``import fdconv_zoo.viz``), so matplotlib stays optional.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .conversion import spectrum_to_conv_weight
from .layers import band_lowpass, inverse_weight_spectrum
from .layers.fdconv import FDConv

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "cosine_similarity_matrix",
    "fbm_lowpass_images",
    "fbm_maps",
    "group_cosine_similarity",
    "group_frequency_responses",
    "plot_fbm_maps",
    "plot_group_frequency_responses",
    "reference_cosine_similarity",
    "save_demo_figures",
    "upcycled_expert_weights",
]

_logger = logging.getLogger(__name__)

GROUP_FIGURE_NAME = "group_responses.png"
FBM_FIGURE_NAME = "fbm_maps.png"


# ------------------------------------------------------------------------------------------- checks
def _check_fdconv(layer: nn.Module, need_fbm: bool = False) -> FDConv:
    if not isinstance(layer, FDConv):
        raise TypeError(f"expected an fdconv_zoo FDConv layer, got {type(layer).__name__}")
    if not layer.use_fdconv:
        raise ValueError(
            "this FDConv is a plain convolution (use_fdconv is False: too few channels or an unsupported kernel size), "
            "so it has no frequency groups or FBM; pick a layer with layer.use_fdconv True"
        )
    if need_fbm and not hasattr(layer, "FBM"):
        raise ValueError(
            f"this FDConv (kernel_size={layer.kernel_size}) has no frequency band modulation (FBM); only the "
            "layers whose kernel size is in use_fbm_if_k_in (3x3 by default) have one"
        )
    return layer


def _check_feature_map(layer: FDConv, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point tensor, got {type(x).__name__}{'' if not torch.is_tensor(x) else ' of dtype ' + str(x.dtype)}"
        )
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] != layer.in_channels:
        raise ValueError(
            f"expected the layer's input, shape (B, {layer.in_channels}, H, W) or ({layer.in_channels}, H, W), got {tuple(x.shape)}"
        )
    return x


# ------------------------------------------------------------------------------ FDW: weight groups
def _neutral_group_attention(layer: FDConv) -> float:
    """The group attention of a neutral layer: 1/(KN·P) for every activation (2σ(0)/(KN·P), (1+tanh 0)/(KN·P),
    softmax of equal logits), so ``alpha`` times it restores the converted weight exactly."""
    return 1.0 / (layer.kernel_num * layer.param_ratio)


@torch.no_grad()
def group_frequency_responses(
    layer: FDConv, groups: Sequence[int] | None = None, *, as_image: bool = False, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The spatial weight each Fourier-disjoint group contributes at neutral attention.

    Group ``g``'s weight is the inverse real FFT (the layer's own ``inverse_weight_spectrum``) of the stored
    spectrum restricted to the bins that the layer's ``frequency_group`` map gives to ``g``, summed over the
    ``param_ratio`` copies and scaled as the layer scales it at neutral group attention (``alpha / (KN·P)``).
    The groups therefore sum to the layer's static weight (the source convolution of a converted layer), and a
    layer with group attentions ``a`` uses ``sum_g KN·P·a_g · W_g`` (P = 1; with P copies each copy has its own
    attentions).

    Returns ``(len(groups), Cout, Cin, k, k)`` (the ``nn.Conv2d`` weight layout), or with ``as_image=True`` the
    official weight-image layout ``(len(groups), Cout·k, Cin·k)`` in which the FFT is taken. All groups by
    default. Computed in float64 (``dtype`` sets the result's dtype): the full set costs
    ``KN × Cout·Cin·k² × 8`` bytes, e.g. 1.2 GB for a 512-channel 3x3 layer with KN = 64.
    """
    layer = _check_fdconv(layer)
    kn, k = layer.kernel_num, layer.kernel_size[0]
    group_ids = list(range(kn)) if groups is None else [int(g) for g in groups]
    bad = [g for g in group_ids if not 0 <= g < kn]
    if bad:
        raise ValueError(f"group indices {bad} out of range: this layer has kernel_num={kn} groups (0..{kn - 1})")
    cols = layer.in_channels * k
    scale = layer.alpha * _neutral_group_attention(layer)
    # (rows, n2, 2): the P copies share the groups. Contiguous whatever the parameter's strides (channels_last).
    spectrum = layer.dft_weight.detach().to(torch.float64).sum(0).contiguous()
    group_map = layer.frequency_group.to(spectrum.device)
    out = []
    for g in group_ids:
        restricted = (spectrum * (group_map == g)[..., None] * scale).contiguous()  # fresh: symmetrised in place
        out.append(inverse_weight_spectrum(restricted, cols).to(dtype))
    images = torch.stack(out)  # (G, Cout·k, Cin·k)
    if as_image:
        return images
    return (
        images.unflatten(1, (layer.out_channels, k)).unflatten(3, (layer.in_channels, k)).transpose(2, 3).contiguous()
    )


def cosine_similarity_matrix(weights: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity (float64, N x N) of N weights, each flattened (``weights``: (N, ...))."""
    if weights.dim() < 2:
        raise ValueError(f"expected N weights stacked along dim 0, shape (N, ...), got {tuple(weights.shape)}")
    flat = weights.detach().flatten(1).to(torch.float64)
    norms = flat.norm(dim=1)
    if (norms == 0).any():
        raise ValueError(
            f"weights {torch.nonzero(norms == 0).flatten().tolist()} are all zero: their cosine similarity is undefined"
        )
    unit = flat / norms[:, None]
    return unit @ unit.T


def group_cosine_similarity(layer: FDConv) -> torch.Tensor:
    """Pairwise cosine similarity (KN x KN, float64) of the layer's group weights (:func:`group_frequency_responses`).

    The paper's claim: disjoint spectra make the groups orthogonal (Parseval), i.e. ~0 off the diagonal, so the
    KN weights span KN directions with the parameter budget of one weight. Measured on converted layers: 3x3
    layers are orthogonal to float64 rounding (~1e-16). The one exception is a property of the official
    grouping, not of this implementation: the spectrum is stored as a half-plane, where column 0 (and the
    Nyquist column) holds both ``f`` and ``-f``; when a group boundary cuts such a tied ``(r, 0)``/``(-r, 0)``
    pair, the two groups share that frequency after the (real) inverse FFT and are not exactly orthogonal
    (seen on 1x1 layers with power-of-two widths, e.g. cosines up to 0.03 for a 64x64 1x1 layer with KN = 64).
    """
    return cosine_similarity_matrix(group_frequency_responses(_check_fdconv(layer)))


def upcycled_expert_weights(
    weight: torch.Tensor, num_experts: int, noise: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """CondConv/ODConv-style experts made from one pretrained weight: copies plus Gaussian noise.

    Dynamic convolutions with K full-size experts are initialised from a pretrained conv by copying its weight
    into every expert, with noise (relative std ``noise``) to break the symmetry. Their pairwise cosine is
    then ~``1 / (1 + noise²)``: the experts are nearly the same weight, the redundancy FDConv's disjoint
    spectral split avoids (K x the parameters, yet one direction). Returns (num_experts, *weight.shape), float64.
    """
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    w = weight.detach().to(torch.float64).cpu()
    std = w.std() if w.numel() > 1 else w.abs().mean()
    eps = torch.randn((num_experts, *w.shape), generator=generator, dtype=torch.float64)
    return w[None] + noise * std * eps


def reference_cosine_similarity(layer: FDConv, noise: float = 0.1, seed: int = 0) -> torch.Tensor:
    """The comparison for :func:`group_cosine_similarity`: KN experts upcycled from the same static weight.

    Independently kaiming-initialised experts would not be a fair baseline: random vectors in high dimension are
    also nearly orthogonal, but they do not compute the pretrained function. The honest comparison (the paper's
    Fig. 1 contrasts FDConv with ODConv's highly similar trained kernels) is the same pretrained weight turned
    into a KN-expert dynamic conv the usual way (:func:`upcycled_expert_weights`): cosine ~1 everywhere.
    """
    layer = _check_fdconv(layer)
    static = spectrum_to_conv_weight(layer.dft_weight.detach().double(), layer.in_channels, layer.kernel_size[0])
    return cosine_similarity_matrix(
        upcycled_expert_weights(static, layer.kernel_num, noise, torch.Generator().manual_seed(seed))
    )


# ------------------------------------------------------------------------- FBM: band modulation maps
@torch.no_grad()
def fbm_maps(layer: FDConv, x: torch.Tensor) -> torch.Tensor:
    """The FBM's spatial attention maps for the layer input ``x``: ``(B, n_att, G, H, W)`` (float32 or wider).

    Computed by the layer's own ``FBM._attention_maps``. Map ``j < len(k_list)`` multiplies band ``j`` (the
    frequencies between cut-offs ``k_list[j-1]`` and ``k_list[j]``, band 0 reaching up to Nyquist); with
    ``lowfreq_att`` a last map multiplies the lowest band, otherwise it is unmodulated. G = ``spatial_group``
    channel groups. Neutral (freshly converted) layers give maps that are exactly 1.
    """
    layer = _check_fdconv(layer, need_fbm=True)
    x = _check_feature_map(layer, x)
    return layer.FBM._attention_maps(x).to(torch.promote_types(x.dtype, torch.float32))


@torch.no_grad()
def fbm_lowpass_images(layer: FDConv, x: torch.Tensor) -> torch.Tensor:
    """The low-pass parts of ``x`` at each FBM cut-off: ``(B, len(k_list), C, H, W)``.

    Computed as the FBM computes them, with ``band_lowpass(x, FBM.k_list, FBM.exact_masks)`` (the official
    64x64 masks, nearest-resized), in float32 (or wider). Band ``j`` of the input is ``low[j-1] - low[j]``
    (``low[-1] = x``); the last low-pass part is the lowest band. ``tests/test_viz.py`` checks that these
    images and :func:`fbm_maps` rebuild ``FBM(x)``.
    """
    layer = _check_fdconv(layer, need_fbm=True)
    x = _check_feature_map(layer, x)
    fbm = layer.FBM
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    with torch.autocast(x.device.type, enabled=False):
        return torch.stack(band_lowpass(xf, fbm.k_list, fbm.exact_masks), 1)


def _band_label(k_list: Sequence[int], j: int) -> str:
    """Chebyshev frequency range (cycles/pixel) of band j: [0.5/k_j, 0.5/k_{j-1}), band 0 up to Nyquist."""
    hi = 0.5 if j == 0 else 0.5 / k_list[j - 1]
    if j == len(k_list):
        return f"|f| < {0.5 / k_list[-1]:.3g}"
    return f"{0.5 / k_list[j]:.3g} <= |f| < {hi:.3g}" if j else f"|f| >= {0.5 / k_list[0]:.3g}"


# --------------------------------------------------------------------------------------- plotting
def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "fdconv_zoo.viz plots need matplotlib, an optional dependency: pip install 'fdconv-zoo[viz]'"
        ) from e
    return matplotlib, Figure, FigureCanvasAgg


def _check_target(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are written as PNG: give a path ending in .png, got {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a .png file path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    return path


def _save_png(fig: Figure, path: str | os.PathLike, overwrite: bool, dpi: int) -> Path:
    """Write ``fig`` to a temporary file beside ``path`` and move it into place: never a half-written PNG."""
    _, _, FigureCanvasAgg = _matplotlib()
    path = _check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # O_EXCL: never follows or reuses an existing file; mode 0o666 lets the umask decide, as for any new file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            FigureCanvasAgg(fig)  # attach the Agg canvas: no pyplot, no GUI backend
            fig.savefig(f, format="png", dpi=dpi)
        if path.exists() and not overwrite:  # appeared while drawing
            raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _logger.info("wrote %s", path)
    return path


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
    matplotlib, Figure, _ = _matplotlib()
    layer = _check_fdconv(layer)
    path = _check_target(path, overwrite)  # fail before the work
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
    return _save_png(fig, path, overwrite, dpi)


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
    matplotlib, Figure, _ = _matplotlib()
    layer = _check_fdconv(layer, need_fbm=True)
    x = _check_feature_map(layer, x)
    if x.shape[0] != 1:
        raise ValueError(f"plot_fbm_maps draws one sample; pass x[:1] (got a batch of {x.shape[0]})")
    path = _check_target(path, overwrite)
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
    return _save_png(fig, path, overwrite, dpi)


# ------------------------------------------------------------------------------------------- demo
def _first_fbm_layer(model: nn.Module) -> tuple[str, FDConv]:
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
    name, layer = _first_fbm_layer(model)
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1, C, H, W) or (C, H, W), got {tuple(image.shape)}")
    targets = [out_dir / GROUP_FIGURE_NAME, out_dir / FBM_FIGURE_NAME]
    for target in targets:
        _check_target(target, overwrite)
    _matplotlib()  # fail before running the model

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
