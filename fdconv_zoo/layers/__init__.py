"""The FDConv layer and its parts: Fourier Disjoint Weight (``fourier_weight``), Kernel Spatial Modulation
(``kernel_modulation``), Frequency Band Modulation (``band_modulation``, ``band_masks``, ``band_split``), and how a
forward runs (``execution`` plans it; ``eager_forward`` on CPUs and in exports, ``batched_forward`` on accelerators
and in compiled graphs; ``per_sample_conv``, ``constant_cache``); ``fdconv_nd`` has the 1-D and 3-D layers. Nothing here imports from the rest
of the package."""

from .band_masks import band_masks
from .band_modulation import FrequencyBandModulation
from .band_split import band_lowpass
from .bounded_attention import bounded_attention
from .execution import ConvMethod, ExecutionPlan, plan_execution, planning_as
from .fdconv import FDConv
from .fdconv_args import DEFAULT_FBM_CFG
from .fdconv_nd import FDConv1d, FDConv3d
from .fourier_weight import conv_weight_to_spectrum, spectrum_to_conv_weight
from .frequency_groups import frequency_group_map
from .inverse_fft import inverse_weight_spectrum
from .kernel_modulation import KernelAttentions, KernelSpatialModulationGlobal, KernelSpatialModulationLocal, StarReLU

__all__ = [
    "DEFAULT_FBM_CFG",
    "ConvMethod",
    "ExecutionPlan",
    "FDConv",
    "FDConv1d",
    "FDConv3d",
    "FrequencyBandModulation",
    "KernelAttentions",
    "KernelSpatialModulationGlobal",
    "KernelSpatialModulationLocal",
    "StarReLU",
    "band_lowpass",
    "band_masks",
    "bounded_attention",
    "conv_weight_to_spectrum",
    "frequency_group_map",
    "inverse_weight_spectrum",
    "plan_execution",
    "planning_as",
    "spectrum_to_conv_weight",
]
