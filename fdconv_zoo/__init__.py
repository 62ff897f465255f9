"""fdconv-zoo: Frequency Dynamic Convolution (FDConv) for timm and Hugging Face transformers.

Importing the package registers the FDConv model variants with timm and with transformers' Auto classes.
"""

from . import timm_models, transformers_models  # noqa: F401  (registration side effects)
from .conversion import conv_weight_to_spectrum, convert_state_dict, spectrum_to_conv_weight
from .freezing import freeze_stages
from .layers import FDConv, FDConv1d, FDConv3d
from .profiling import count_flops
from .surgery import PAPER_FDCONV_KWARGS, convert_to_fdconv, count_parameters
from .timm_models import save_fdconv_for_hf
from .transformers_models import load_official_checkpoint

__version__ = "0.1.0.dev0"

__all__ = [
    "FDConv",
    "FDConv1d",
    "FDConv3d",
    "PAPER_FDCONV_KWARGS",
    "conv_weight_to_spectrum",
    "convert_state_dict",
    "convert_to_fdconv",
    "count_flops",
    "count_parameters",
    "freeze_stages",
    "load_official_checkpoint",
    "save_fdconv_for_hf",
    "spectrum_to_conv_weight",
    "__version__",
]
