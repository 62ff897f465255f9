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

from .analysis import (
    cosine_similarity_matrix,
    fbm_lowpass_images,
    fbm_maps,
    group_cosine_similarity,
    group_frequency_responses,
    reference_cosine_similarity,
    upcycled_expert_weights,
)
from .plots import plot_fbm_maps, plot_group_frequency_responses, save_demo_figures

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
