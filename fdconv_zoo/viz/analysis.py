"""The numbers behind FDConv's figures: each Fourier-disjoint weight group's frequency response and the groups'
cosine similarities (FDW), and the frequency band modulation's attention maps and band images (FBM). torch only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..conversion import spectrum_to_conv_weight
from ..layers import band_lowpass, inverse_weight_spectrum
from ..layers.fdconv import FDConv

__all__ = [
    "cosine_similarity_matrix",
    "fbm_lowpass_images",
    "fbm_maps",
    "group_cosine_similarity",
    "group_frequency_responses",
    "reference_cosine_similarity",
    "upcycled_expert_weights",
]


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
