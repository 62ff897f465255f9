"""The FDConv layer and its building blocks."""

from .fdconv import (
    DEFAULT_FBM_CFG,
    FDConv,
    FrequencyBandModulation,
    KernelSpatialModulationGlobal,
    KernelSpatialModulationLocal,
    StarReLU,
)
from .frequency import band_masks, frequency_group_map

__all__ = [
    "DEFAULT_FBM_CFG",
    "FDConv",
    "FrequencyBandModulation",
    "KernelSpatialModulationGlobal",
    "KernelSpatialModulationLocal",
    "StarReLU",
    "band_masks",
    "frequency_group_map",
]
