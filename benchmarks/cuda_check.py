"""FDConv on a CUDA device computes what it computes on the CPU: the checks the CPU test suite cannot run.

    python benchmarks/cuda_check.py                 # needs a CUDA device; exits 1 if a check fails
    python benchmarks/cuda_check.py --device cpu    # the same checks on the CPU (a smoke run of this script)
    python benchmarks/cuda_check.py --checks golden # only the official test vectors (seconds)

1. The official test vectors (``tests/data/golden``) on the device, in eval and train, outputs and the
   updated BatchNorm statistics, with the CPU suite's tolerances.
2. Converted models (ResNet-50, ConvNeXt-T, Swin-T, random source weights) against their source models on the
   device: the same logits at initialisation.
3. Active attentions, forward and backward, on the device (float32, and bfloat16 autocast) against float64 on
   the CPU, per layer formulation the device plans (grouped convolution, pointwise matmul, token layout).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from safetensors import safe_open

import fdconv_zoo  # noqa: F401  (registers the FDConv models)
from fdconv_zoo import FDConv, convert_state_dict
from fdconv_zoo.layers import plan_execution

__all__ = ["main", "run_checks"]

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden"
MODELS = ["resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224"]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-30)).item()


def _golden(device: torch.device) -> list[str]:
    failures = []
    for path in sorted(GOLDEN.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        layer = FDConv(**json.loads(meta["config"]))
        layer.load_state_dict(
            {k.removeprefix("state."): v for k, v in t.items() if k.startswith("state.")}, strict=True
        )
        layer = layer.to(device).train(meta["mode"] == "train")
        with torch.no_grad():
            out = layer(t["input"].to(device))
        try:
            torch.testing.assert_close(out.cpu(), t["output"], rtol=1e-4, atol=1e-4)
            state = layer.state_dict()
            for key, expected in (
                (k.removeprefix("post_state."), v) for k, v in t.items() if k.startswith("post_state.")
            ):
                torch.testing.assert_close(state[key].double().cpu(), expected.double(), rtol=0, atol=1e-5, msg=key)
            print(f"  golden {path.stem}: ok")
        except AssertionError as exc:
            failures.append(f"golden {path.stem}: {str(exc).splitlines()[0]}")
            print(f"  golden {path.stem}: FAILED")
    return failures


def _conversion(device: torch.device) -> list[str]:
    failures = []
    for base in MODELS:
        torch.manual_seed(0)
        source = timm.create_model(base).eval()
        with torch.no_grad():  # timm zero-initialises the last norm of each residual branch: turn them on
            for module in source.modules():
                if isinstance(module, torch.nn.modules.batchnorm._NormBase) and module.weight is not None:
                    module.weight[module.weight == 0] = 1.0
        model = timm.create_model(f"{base}_fdconv").eval()
        model.load_state_dict(convert_state_dict(source.state_dict(), model), strict=True)
        x = torch.randn(2, 3, 224, 224)
        with torch.no_grad():
            error = _relative_error(model.to(device)(x.to(device)), source.to(device)(x.to(device)))
        status = "ok" if error < 1e-4 else "FAILED"
        print(f"  converted {base} vs source on {device}: relative error {error:.1e} {status}")
        if error >= 1e-4:
            failures.append(f"converted {base}: relative error {error:.1e}")
    return failures


def _active_attentions(device: torch.device) -> list[str]:
    failures = []
    cases = {
        "3x3 with FBM": (dict(in_channels=64, out_channels=96, kernel_size=3, padding=1), (2, 64, 40, 36)),
        "3x3 stride 2": (dict(in_channels=64, out_channels=64, kernel_size=3, stride=2, padding=1), (2, 64, 33, 31)),
        "1x1 pointwise": (dict(in_channels=128, out_channels=64, kernel_size=1), (2, 128, 24, 24)),
        "token layout": (dict(in_channels=96, out_channels=192, kernel_size=1, token_layout=True), (2, 7, 9, 96)),
    }
    for name, (kwargs, shape) in cases.items():
        torch.manual_seed(0)
        layer = FDConv(**kwargs, kernel_num=16).train()
        with torch.no_grad():
            for p in (p for n, p in layer.named_parameters() if n.split(".")[0] in ("KSM_Global", "KSM_Local", "FBM")):
                p.add_(torch.randn_like(p), alpha=0.1)
        x = torch.randn(shape, dtype=torch.float64)
        reference = layer.double()
        xr = x.clone().requires_grad_(True)
        out_ref = reference(xr)
        out_ref.square().mean().backward()
        grads_ref = {n: p.grad.clone() for n, p in reference.named_parameters()}
        for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
            layer = copy.deepcopy(reference).float().to(device)
            layer.zero_grad(set_to_none=True)
            xd = x.float().to(device).requires_grad_(True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not torch.float32):
                out = layer(xd)
                method = plan_execution(layer, xd).method.value
            out.float().square().mean().backward()
            errors = {"output": _relative_error(out, out_ref), "input grad": _relative_error(xd.grad, xr.grad)}
            errors |= {f"{n} grad": _relative_error(p.grad, grads_ref[n]) for n, p in layer.named_parameters()}
            worst = max(errors, key=errors.get)
            status = "ok" if errors[worst] < tolerance else "FAILED"
            print(
                f"  {name} ({method}, {str(dtype).removeprefix('torch.')}) vs CPU float64: worst {worst} {errors[worst]:.1e} {status}"
            )
            if errors[worst] >= tolerance:
                failures.append(f"{name} {dtype}: {worst} relative error {errors[worst]:.1e}")
    return failures


CHECKS = {"golden": _golden, "conversion": _conversion, "attentions": _active_attentions}


def run_checks(device: torch.device, checks: Sequence[str] = tuple(CHECKS)) -> list[str]:
    """The named checks (default: all) on ``device``, printing a line per case; the failures, empty when all pass."""
    failures = []
    for title in checks:
        check = CHECKS[title]
        print(title)
        failures += check(device)
    print("all checks passed" if not failures else "FAILED:\n  " + "\n  ".join(failures))
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--checks", nargs="+", choices=list(CHECKS), default=list(CHECKS), help="default: all")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this script checks FDConv on one (the CPU is covered by the test suite)")
        return 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, timm {timm.__version__}")
    return 1 if run_checks(device, args.checks) else 0


if __name__ == "__main__":
    sys.exit(main())
