"""Dev/CI-only import hook: lets the CUDA-only torchvision 0.28.0 wheel import on a CPU build of torch.

torchvision registers fake kernels for ``torchvision::nms``/``qnms`` at import time; without its compiled
ops (they need CUDA libraries) that registration fails with "operator torchvision::nms does not exist",
which also breaks ``import timm``. Just before torchvision is first imported, this hook defines the two
op schemas so the import succeeds. ``torchvision.ops.nms`` and friends stay unavailable.

Installed into the dev virtual environment only (see the Makefile); the fdconv_zoo package never
patches a user's environment.
"""

import importlib.abc
import sys

_LIBRARIES = []  # keep the torch.library handles alive for the life of the process


class _TorchvisionCpuShim(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            _define_missing_ops()
        return None  # the normal finders import the real package


def _define_missing_ops():
    import torch

    if torch.version.cuda is not None:  # a CUDA torch can load torchvision's own ops
        return
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already defined (torchvision's ops loaded after all)
        return
    _LIBRARIES.append(lib)


sys.meta_path.insert(0, _TorchvisionCpuShim())
