"""Frequency Band Modulation (FBM): the input split into frequency bands, each re-weighted by a spatial map.

The official masks are Chebyshev low-pass boxes made on a 64x64 grid and nearest-resized to the input size
(:mod:`.band_masks`). The eager CPU plan and exports split the bands with partial-DFT matrix products
(:mod:`.band_split`); accelerators and compiled graphs with one real FFT and one batched inverse for all bands.
1-D and 3-D inputs (this package's extension) get the same boxes over their ``rfftn`` bins.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .band_masks import hermitian_band_pass_masks
from .band_split import iter_band_lowpass
from .bounded_attention import bounded_attention
from .constant_cache import constant, parameter_key
from .conv_geometry import CONV_CLASSES, conv_nd
from .execution import float32_region
from .tap_sum_conv import tap_sum_conv
from .windowed_conv import windowed_conv

__all__ = ["FrequencyBandModulation"]


@torch.compiler.assume_constant_result
def _zero_block(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, device=device)


def _split_dtype(x: torch.Tensor) -> torch.dtype:
    """The band split's dtype: float64 for float64 input, else float32 (not ``promote_types``: that is an op)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _group_major(tensors: list[torch.Tensor], by_selection: bool = False) -> torch.Tensor:
    """The bands' convolution weights (or biases), (G, ...) each, as one grouped convolution's: (G * n, ...), each
    group's bands together. ``by_selection`` builds it with ``torch.where`` on a band index instead of ``stack``:
    compilers read that in place, where they copy each band's tensor into a stack."""
    if not by_selection:
        return torch.stack(tensors, 1).flatten(0, 1)
    n = len(tensors)
    band = torch.arange(n, device=tensors[0].device).view(1, n, *(1,) * (tensors[0].dim() - 1))
    picked = [torch.where(band == j, t[:, None], 0.0) for j, t in enumerate(tensors)]
    return sum(picked[1:], picked[0]).flatten(0, 1)


class _BandModulation(torch.autograd.Function):
    """``sum_j a_j * irfftn(m_j * rfftn(x))`` for (B, C, *spatial) ``x``, (B, n+1, G, *spatial) attentions ``a``
    and real masks ``m``, with a backward that uses the split's symmetry: with a real mask symmetric in
    frequency, each band split is a self-adjoint operator, so the input's gradient is one more split,
    ``irfftn(sum_j m_j * rfftn(a_j * g))``: five kernels where autograd's backward of the forward's ops runs
    eight (a training step runs this once per layer)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, att: torch.Tensor, masks: torch.Tensor, groups: int) -> torch.Tensor:
        dims, sizes = tuple(range(2 - x.dim(), 0)), x.shape[2:]
        spectrum = torch.view_as_real(torch.fft.rfftn(x, dim=dims))
        bands = torch.fft.irfftn(
            torch.view_as_complex(spectrum[:, None] * masks[:, None, ..., None]), s=sizes, dim=dims
        )
        bands = bands.unflatten(2, (groups, -1))  # (B, n+1, G, C/G, *spatial)
        ctx.save_for_backward(bands, att, masks)
        return (bands * att[:, :, :, None]).sum(1).flatten(1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        bands, att, masks = ctx.saved_tensors
        grad = grad.unflatten(1, bands.shape[2:4])[:, None]  # (B, 1, G, C/G, *spatial)
        grad_x = grad_att = None
        if ctx.needs_input_grad[1]:
            grad_att = (bands * grad).sum(3)
        if ctx.needs_input_grad[0]:
            dims, sizes = tuple(range(-len(bands.shape[4:]), 0)), bands.shape[4:]
            per_band = torch.view_as_real(torch.fft.rfftn((grad * att[:, :, :, None]).flatten(2, 3), dim=dims))
            summed = (per_band * masks[:, None, ..., None]).sum(1)
            grad_x = torch.fft.irfftn(torch.view_as_complex(summed), s=sizes, dim=dims)
        return grad_x, grad_att, None, None


class FrequencyBandModulation(nn.Module):
    """Splits the input into frequency bands and re-weights each band with a spatial attention map.

    With all attentions equal to 1 the bands telescope back to the input, so zero-initialised
    attention convolutions make the module an identity.
    """

    def __init__(
        self,
        in_channels: int,
        k_list: Sequence[int] = (2, 4, 8),
        lowfreq_att: bool = False,
        act: str = "sigmoid",
        spatial_group: int = 1,
        spatial_kernel: int = 3,
        init: str = "zero",
        exact_masks: bool = False,
        spatial_dims: int = 2,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if act not in ("sigmoid", "tanh", "softmax"):
            raise ValueError(f"fbm_cfg act must be 'sigmoid', 'tanh' or 'softmax', got {act!r}")
        if spatial_group > 64:
            spatial_group = in_channels  # official rule
        if in_channels % spatial_group:
            raise ValueError(f"fbm_cfg spatial_group={spatial_group} must divide in_channels={in_channels}")
        self.k_list = [int(k) for k in k_list]
        self.lowfreq_att = lowfreq_att
        self.act = act
        self.spatial_group = spatial_group
        self.init = init
        self.exact_masks = exact_masks
        self.spatial_dims = spatial_dims
        n_att = len(self.k_list) + int(lowfreq_att)
        self.freq_weight_conv_list = nn.ModuleList(
            CONV_CLASSES[spatial_dims](
                in_channels,
                spatial_group,
                spatial_kernel,
                padding=spatial_kernel // 2,
                groups=spatial_group,
                bias=True,
                device=device,
                dtype=dtype,
            )
            for _ in range(n_att)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in self.freq_weight_conv_list:
            if self.init == "zero":  # official: N(0, 1e-6^2); exactly zero makes the module an exact identity
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
            else:
                conv.reset_parameters()

    def _attention_maps(self, x: torch.Tensor, tap_sum: bool = False) -> torch.Tensor:
        """All band attentions from one grouped conv: (B, n_att, G, *spatial); ``tap_sum`` computes it with
        :func:`~.tap_sum_conv.tap_sum_conv` (odd kernels)."""
        convs = self.freq_weight_conv_list
        n, g = len(convs), self.spatial_group
        weight = torch.stack([c.weight for c in convs], 1)  # (G, n, Cin/G, s, ...): group-major for groups=G
        bias = torch.stack([c.bias for c in convs], 1)
        if tap_sum and all(k % 2 for k in convs[0].kernel_size):
            logits = tap_sum_conv(x, weight.flatten(0, 1), bias.flatten(), groups=g)
        else:
            logits = conv_nd(x, weight.flatten(0, 1), convs[0], groups=g, bias=bias.flatten())
        return bounded_attention(logits.unflatten(1, (g, n)).transpose(1, 2), self.act, dim=2)

    def forward(
        self,
        x: torch.Tensor,
        *,
        in_place: bool = False,
        exporting: bool = False,
        recompute: bool = False,
        convolution_gemms: bool = False,
        tap_sum_attention: bool = False,
        reuse_constants: bool = False,
    ) -> torch.Tensor:
        """Modulated ``x`` (B, C, *spatial). ``in_place`` (only without autograd) accumulates the bands into one
        buffer; ``recompute`` keeps only ``x`` and the attention maps for backward and redoes the band split
        there (the bands are several input-sized tensors per layer, and the split is cheap next to the rest);
        ``convolution_gemms`` runs the split's products as 1x1 convolutions (see :func:`band_lowpass`);
        ``tap_sum_attention`` makes the attention maps by :func:`~.tap_sum_conv.tap_sum_conv`;
        ``reuse_constants`` takes the split's matrices from a cache (eager only, see :func:`iter_band_lowpass`)."""
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        att = self._attention_maps(x, tap_sum_attention).to(compute_dtype)  # (B, n_att, G, *spatial)
        if recompute:
            return checkpoint(
                self._modulate, x, att, in_place, exporting, convolution_gemms, reuse_constants, use_reentrant=False
            )
        return self._modulate(x, att, in_place, exporting, convolution_gemms, reuse_constants)

    def _modulate(
        self,
        x: torch.Tensor,
        att: torch.Tensor,
        in_place: bool,
        exporting: bool,
        convolution_gemms: bool,
        reuse_constants: bool,
    ) -> torch.Tensor:
        c = x.shape[1]
        g, n = self.spatial_group, len(self.k_list)
        xf = x.to(att.dtype)
        # sum_j a_j (low_{j-1} - low_j) + a_n low_{n-1}, with low_{-1} = x and a_n = 1 (or the low-band
        # attention), telescoped into a_0 x + sum_j (a_{j+1} - a_j) low_j: no high-band tensors.
        last = att[:, n:] if self.lowfreq_att else torch.ones_like(att[:, :1])
        coefficients = torch.cat([att[:, 1:n], last], 1) - att[:, :n]  # (B, n, G, *spatial)
        out = att[:, 0, :, None] * xf.unflatten(1, (g, c // g))
        with float32_region(x.device.type, exporting):  # the band split stays in float32 under autocast
            # In place (no autograd), each band is consumed before the next is written into the same buffer.
            lows = iter_band_lowpass(
                xf,
                self.k_list,
                self.exact_masks,
                self.spatial_dims,
                convolution_gemms,
                reuse_output=in_place,
                reuse_constants=reuse_constants,
            )
            for j, low in enumerate(lows):
                low = low.unflatten(1, (g, c // g))
                out = (
                    out.addcmul_(coefficients[:, j, :, None], low)
                    if in_place
                    else out.addcmul(coefficients[:, j, :, None], low)
                )
        return out.flatten(1, 2).to(x.dtype)

    # ----------------------------------------------------------------------------- batched (FFT) form
    def _stacked_attention_conv(self, reuse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """All band attention convolutions as one (group-major) weight and bias, plus, without a low-band
        attention, a zero one for the lowest band (its sigmoid is exactly 1/2, i.e. attention 1); the tanh form's
        logits doubled (``1 + tanh(z) = 2 sigmoid(2 z)``), so one sigmoid serves both."""
        convs = list(self.freq_weight_conv_list)
        weights, biases = [c.weight for c in convs], [c.bias for c in convs]
        if not self.lowfreq_att:
            for tensors in (weights, biases):  # a constant (cached in eager code): no op per forward
                key = (tensors[0].shape, tensors[0].dtype, tensors[0].device)
                tensors.append(
                    constant(self, f"zero_{tensors[0].dim()}d", key, lambda key=key: _zero_block(*key), reuse)
                )
        weight, bias = _group_major(weights), _group_major(biases)
        return (weight * 2, bias * 2) if self.act == "tanh" else (weight, bias)

    def _compiled_attentions(self, x: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
        """Each attended band's map, (B, G, *spatial), half its attention, for compiled graphs: one windowed
        convolution (:mod:`.windowed_conv`, a reduction kernel) for all bands, its weights stacked by selecting
        with a band index, which the compiler reads in place (``cat`` would copy each band's weights per call),
        one sigmoid for all maps."""
        xf, g, convs = x.to(dtype), self.spatial_group, list(self.freq_weight_conv_list)
        weight = _group_major([c.weight.to(dtype) for c in convs], by_selection=True)
        bias = _group_major([c.bias.to(dtype) for c in convs], by_selection=True)
        logits = windowed_conv(xf, weight, bias, groups=g).unflatten(1, (g, len(convs)))
        return list(torch.sigmoid(logits * 2 if self.act == "tanh" else logits).unbind(2))

    def _stacked_tanh_conv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The band attention convolutions stacked (group-major) and scaled so that the tanh of their output is the
        attention minus one: ``2 sigmoid(z) - 1 = tanh(z / 2)``, and for the tanh form ``tanh(z)``."""
        convs = self.freq_weight_conv_list
        scale = 1.0 if self.act == "tanh" else 0.5
        return _group_major([c.weight for c in convs]) * scale, _group_major([c.bias for c in convs]) * scale

    def _inference_without_low_band_attention(
        self, x: torch.Tensor, dtype: torch.dtype, reuse: bool, exporting: bool
    ) -> torch.Tensor:
        """Inference when the lowest band has no attention (it is 1) and the others are sigmoids: the bands sum
        to the input, so ``sum_j a_j band_j = x + sum_{j<n} (a_j - 1) band_j``, and only n of the n+1 bands go
        through the masks and the inverse FFT (a quarter fewer bytes with three cut-offs), their attentions
        minus one as one tanh."""
        convs = self.freq_weight_conv_list
        dims, sizes = tuple(range(-self.spatial_dims, 0)), tuple(x.shape[-self.spatial_dims :])
        c, g, n = x.shape[1], self.spatial_group, len(convs)
        tensors = [t for conv in convs for t in (conv.weight, conv.bias)]
        weight, bias = constant(self, "tanh_conv", lambda: parameter_key(*tensors), self._stacked_tanh_conv, reuse, 1)
        minus_one = conv_nd(x, weight.to(x.dtype), convs[0], groups=g, bias=bias.to(x.dtype)).to(dtype).tanh_()
        key = (sizes, tuple(self.k_list), self.exact_masks, 1.0, dtype, x.device)
        masks = constant(self, "band_passes", key, lambda: hermitian_band_pass_masks(*key), reuse)[:n]
        with float32_region(x.device.type, exporting):
            xf = x.to(dtype)
            spectrum = torch.view_as_real(torch.fft.rfftn(xf, dim=dims))
            bands = torch.fft.irfftn(
                torch.view_as_complex(spectrum[:, None] * masks[:, None, ..., None]), s=sizes, dim=dims
            )
        bands = bands.unflatten(2, (g, c // g)).mul_(minus_one.unflatten(1, (g, n)).transpose(1, 2)[:, :, :, None])
        return bands.sum(1).flatten(1, 2).add_(xf).to(x.dtype)

    def input_spectrum(self, x: torch.Tensor, exporting: bool = False) -> torch.Tensor:
        """``rfftn(x)`` over the spatial dims as real (re, im) pairs, in float32 (float64 for float64 input)."""
        dims = tuple(range(-self.spatial_dims, 0))
        with float32_region(x.device.type, exporting):
            return torch.view_as_real(torch.fft.rfftn(x.to(_split_dtype(x)), dim=dims))

    def shares_spectrum(self, compiled: bool) -> bool:
        """Whether :meth:`forward_batched` takes the input's spectrum from the caller (compiled graphs' sigmoid
        forms), which can then read the positions' mean from its zero-frequency bin."""
        return compiled and self.act != "softmax"

    def forward_batched(
        self,
        x: torch.Tensor,
        *,
        exporting: bool = False,
        reuse: bool = False,
        compiled: bool = False,
        spectrum: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` in a fixed handful of batched ops (accelerators, compiled graphs): one convolution for
        every band's attention map, one real FFT of the input, one product with the stacked band-pass masks and
        one inverse FFT for all bands, one product and sum with the attentions. ``reuse`` takes the masks and,
        where no autograd is recorded, the stacked attention weights from the module's cache; ``spectrum`` is
        :meth:`input_spectrum` when the caller has it (see :meth:`shares_spectrum`)."""
        dims, sizes = tuple(range(-self.spatial_dims, 0)), tuple(x.shape[-self.spatial_dims :])
        c, g = x.shape[1], self.spatial_group
        dtype = _split_dtype(x)
        if not (compiled or torch.is_grad_enabled() or self.lowfreq_att or self.act == "softmax"):
            return self._inference_without_low_band_attention(x, dtype, reuse, exporting)
        separate = self.shares_spectrum(compiled)
        if separate:
            maps = self._compiled_attentions(x, dtype)
        else:
            convs = self.freq_weight_conv_list
            tensors = [t for conv in convs for t in (conv.weight, conv.bias)]
            no_grad = not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            weight, bias = constant(
                self,
                "attention_conv",
                lambda: parameter_key(*tensors),
                lambda: self._stacked_attention_conv(reuse),
                reuse and no_grad,
                1,
            )
            logits = conv_nd(x, weight.to(x.dtype), convs[0], groups=g, bias=bias.to(x.dtype)).to(dtype)
            logits = logits.unflatten(1, (g, -1))  # (B, G, n+1, *spatial)
            if self.act == "softmax":
                att = bounded_attention(logits, "softmax", dim=1)
            else:
                att = logits.sigmoid_() if not torch.is_grad_enabled() else torch.sigmoid(logits)
        # Compiled, an unattended lowest band is the input minus the others (the bands sum to it): it skips the
        # masks and the inverse FFT, and the attended bands' factors are the attentions minus one.
        drop_low = separate and not self.lowfreq_att
        scale = 1.0 if self.act == "softmax" or drop_low else 2.0
        key = (sizes, tuple(self.k_list), self.exact_masks, scale, dtype, x.device)
        masks = constant(self, "band_passes", key, lambda: hermitian_band_pass_masks(*key), reuse)
        masks = masks[: len(maps)] if drop_low else masks
        if not separate and torch.is_grad_enabled():
            with float32_region(x.device.type, exporting):
                return _BandModulation.apply(x.to(dtype), att.transpose(1, 2), masks, g).to(x.dtype)
        spectrum = self.input_spectrum(x, exporting) if spectrum is None else spectrum
        with float32_region(x.device.type, exporting):
            # Real (re, im) pairs times the real masks: no complex kernel (compilers generate none for those).
            masked = torch.view_as_complex(spectrum[:, None] * masks[:, None, ..., None])
            bands = torch.fft.irfftn(masked, s=sizes, dim=dims)  # (B, bands, C, *spatial)
        bands = bands.unflatten(2, (g, c // g))
        if separate:  # one elementwise sum the compiler fuses with the sigmoids
            if drop_low:
                weighted = sum(bands[:, j] * (2 * a[:, :, None] - 1) for j, a in enumerate(maps))
                return (weighted.flatten(1, 2) + x.to(dtype)).to(x.dtype)
            weighted = sum(bands[:, j] * a[:, :, None] for j, a in enumerate(maps))
            return weighted.flatten(1, 2).to(x.dtype)
        return bands.mul_(att.transpose(1, 2)[:, :, :, None]).sum(1).flatten(1, 2).to(x.dtype)
