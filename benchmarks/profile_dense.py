"""Where an FDConv backbone's time goes at dense resolution: its parts in eval, and ablations of a training step.

    python benchmarks/profile_dense.py                                  # resnet50 512x512 batch 2
    python benchmarks/profile_dense.py --setting resnet50:800x1333:1 --repeats 3
    python benchmarks/profile_dense.py --official path/to/FDConv.py      # the training step against the official layer

Eval (a no-grad forward) is attributed by timing FDConv's parts where the layer calls them; CPU ops run
synchronously, so the wall time around a call is its cost (hence CPU only). The parts: the per-sample
convolution, the weight images (group attentions times the spectrum, then the inverse FFT), the local attention's
logits, the modulation of the weights by the attentions, the global attention branch, frequency band modulation
(FBM), the rest of FDConv's forward (pooling, chunking, bias), and everything outside FDConv layers; within the
weight images, the inverse FFT alone. For a setting with an eval target (``bench_dense.TARGETS``) a second table
sets what FDConv adds against what the target allows.

A training step's backward runs in autograd's engine, out of reach of such timers, so it is attributed by
ablation: the same backbone without FBM, without the local attention, and with its per-sample weights kept for
backward instead of recomputed, each timed round-robin with the base model and the full FDConv backbone. The
difference to the full backbone is what that part costs in forward, recompute and backward together. Each
variant's peak training memory comes beside its time. ``--official PATH`` (your copy of the official
``FDConv.py``) adds the FDConv backbone with the official layers to those rounds (``bench_dense`` checks it
computes the same function) and, for a setting with that target, sets the training step against it: how far
the full backbone is from what the target allows, and the memory at which keeping the weights would close it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, load_official_fdconv, machine_description, median_times, peak_memory_mib  # noqa: E402
from bench_dense import TARGETS, Setting, activate_attentions, official_backbone, training_or_eval_step  # noqa: E402

from fdconv_zoo import FDConv  # noqa: E402
from fdconv_zoo.layers import eager_forward, fourier_weight  # noqa: E402
from fdconv_zoo.layers import fdconv as fdconv_module  # noqa: E402

__all__ = [
    "ABLATIONS",
    "EVAL_PARTS",
    "INVERSE_FFT",
    "OFFICIAL",
    "main",
    "official_training_budget",
    "training_ablations",
]

# (label, owner, attribute): the callables timed in eval, all called inside FDConv.forward (the eager CPU plan).
EVAL_PARTS = [
    ("per-sample convolution", eager_forward, "per_sample_conv"),
    ("weight images (group attention x spectrum, inverse FFT)", eager_forward, "weight_image"),
    ("local attention logits", fdconv_module.KernelSpatialModulationLocal, "forward"),
    ("weight modulation (attention products)", eager_forward, "modulate_weight"),
    ("global attention branch", fdconv_module.KernelSpatialModulationGlobal, "forward"),
    ("frequency band modulation (FBM)", fdconv_module.FrequencyBandModulation, "forward"),
]
# Within the weight images: the inverse real FFT of each sample's spectrum, the one pass of the per-sample weights
# that the official layer runs as it is (one irfft2 per sample and layer). Either form is called once per image.
INVERSE_FFT = "of which the inverse FFT (irfft2)"
_INVERSE_FFT_CALLS = [
    (INVERSE_FFT, fourier_weight, "inverse_weight_spectrum_values"),
    (INVERSE_FFT, fourier_weight, "inverse_weight_planes"),
]


def _without(part: str) -> Callable[[FDConv], None]:
    def ablate(layer: FDConv) -> None:
        if hasattr(layer, part):
            delattr(layer, part)

    return ablate


def _keep_weights(layer: FDConv) -> None:
    layer.recompute_weight = False


_ALL_FDCONV = "FDConv layers in all"
_KEPT = "per-sample weights kept, not recomputed"
OFFICIAL = "official layers"
_REST = "rest of FDConv's forward (pooling, chunks, bias)"
_OUTSIDE = "outside FDConv layers (stem, norms, activations, plain convs)"

# (label, change to every FDConv layer): training-step ablations.
ABLATIONS: list[tuple[str, Callable[[FDConv], None]]] = [
    ("without FBM", _without("FBM")),
    ("without the local attention", _without("KSM_Local")),
    (_KEPT, _keep_weights),
]


@contextlib.contextmanager
def _timed(parts: list[tuple[str, object, str]], totals: dict[str, float]) -> Iterator[None]:
    """Wrap each callable so that its wall time adds to ``totals[label]``; restored on exit."""
    originals = [(owner, attr, getattr(owner, attr)) for _, owner, attr in parts]

    def wrap(label: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - start

        return timed

    try:
        for (label, owner, attr), (_, _, fn) in zip(parts, originals):
            setattr(owner, attr, wrap(label, fn))
        yield
    finally:
        for owner, attr, fn in originals:
            setattr(owner, attr, fn)


def _fdconv_model(setting: Setting, change: Callable[[FDConv], None] | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = setting.create(f"{setting.model}_fdconv")
    activate_attentions(model)
    if change is not None:
        for layer in model.modules():
            if isinstance(layer, FDConv) and layer.use_fdconv:
                change(layer)
    return model


def eval_attribution(setting: Setting, repeats: int) -> dict[str, float]:
    """ms per no-grad forward of each part of the FDConv backbone and of the backbone in all while the parts are
    timed (``"total"``); and of the base model (``"base"``) and the untimed FDConv backbone (``"fdconv"``), timed
    round-robin beside each other first.

    The base model is timed beside the FDConv backbone, as in the dense table, not alone: glibc's allocator adapts
    its thresholds to the large blocks a process frees, so a model timed before the other one ever ran would pay
    page faults the other does not (at dea60f2, ``resnet50`` alone took 946 ms here against 654 ms in the table)."""
    x = torch.randn(setting.batch, 3, setting.height, setting.width)
    base, model = setting.create(setting.model).eval(), _fdconv_model(setting).eval()
    step = training_or_eval_step(model, x, False, None)
    paired = median_times(
        {"base": training_or_eval_step(base, x, False, None), "fdconv": step}, x.device, repeats=repeats
    )
    totals: dict[str, float] = defaultdict(float)
    start = time.perf_counter()
    with _timed([*EVAL_PARTS, *_INVERSE_FFT_CALLS, (_ALL_FDCONV, fdconv_module.FDConv, "forward")], totals):
        for _ in range(repeats):
            step()
    total = (time.perf_counter() - start) * 1e3 / repeats
    ms = {label: totals[label] * 1e3 / repeats for label, _, _ in EVAL_PARTS}
    fdconv_ms = totals[_ALL_FDCONV] * 1e3 / repeats
    ms[_REST] = fdconv_ms - sum(ms.values())
    ms[_OUTSIDE] = total - fdconv_ms
    return ms | {
        INVERSE_FFT: totals[INVERSE_FFT] * 1e3 / repeats,
        "total": total,
        "base": paired["base"],
        "fdconv": paired["fdconv"],
    }


def eval_budget(setting: Setting, ms: dict[str, float]) -> list[list[str]] | None:
    """Rows (item, ms, / base) that set what FDConv adds in eval against what the setting's eval target allows
    (None without an eval target): the untimed backbone's time over the base model's, both round-robin, and
    FDConv's own parts, the inverse FFT among them."""
    limit = TARGETS.get(setting.spec, {}).get("eval")
    if limit is None:
        return None
    base = ms["base"]
    own = sum(ms[label] for label, _, _ in EVAL_PARTS[1:]) + ms[_REST]  # all but the per-sample convolution
    rows = [
        (f"allowed over the base model (eval <= {limit[0]:g}x)", (limit[0] - 1) * base),
        ("FDConv backbone over the base model (untimed, round-robin)", ms["fdconv"] - base),
        ("FDConv's own parts (all parts but the per-sample convolution)", own),
        (INVERSE_FFT, ms[INVERSE_FFT]),
        (
            "per-sample convolution and everything outside FDConv, over the base model",
            ms[EVAL_PARTS[0][0]] + ms[_OUTSIDE] - base,
        ),
    ]
    return [[label, f"{v:.0f}", f"{v / base:.2f}x"] for label, v in rows]


def training_ablations(setting: Setting, repeats: int, official_cls: type | None = None) -> dict[str, dict[str, float]]:
    """Per variant (the base model, the full FDConv backbone, each ablation, and with ``official_cls`` the
    backbone with the official layers): ``ms`` per training step, round-robin, and ``mib``, its peak training
    memory (one step each, after the timed rounds)."""
    x = torch.randn(setting.batch, 3, setting.height, setting.width)
    models = {"base": setting.create(setting.model), "full FDConv": _fdconv_model(setting)}
    models.update({label: _fdconv_model(setting, change) for label, change in ABLATIONS})
    if official_cls is not None:
        models[OFFICIAL] = official_backbone(setting, models["full FDConv"], official_cls)
    steps = {name: training_or_eval_step(m.train(), x, True, None) for name, m in models.items()}
    times = median_times(steps, x.device, repeats=repeats)
    result = {}
    for name, step in steps.items():
        models[name].zero_grad(set_to_none=True)
        result[name] = {"ms": times[name], "mib": peak_memory_mib(step, x.device)}
    return result


def _ablation_rows(variants: dict[str, dict[str, float]]) -> list[list[str]]:
    base, full = variants["base"], variants["full FDConv"]
    official = variants.get(OFFICIAL)
    rows = []
    for name, v in variants.items():
        row = [
            name,
            f"{v['ms']:.0f}",
            f"{v['ms'] / base['ms']:.2f}x",
            "-" if name in ("base", "full FDConv", OFFICIAL) else f"{full['ms'] - v['ms']:.0f}",
        ]
        row += [f"{v['mib']:.0f}", f"{v['mib'] / base['mib']:.2f}x"]
        if official is not None:
            row.append("-" if name in ("base", OFFICIAL) else f"{official['ms'] / v['ms']:.2f}x")
        rows.append(row)
    return rows


def official_training_budget(setting: Setting, variants: dict[str, dict[str, float]]) -> list[list[str]] | None:
    """Rows (item, ms, memory / base) that set the full FDConv backbone's training step against the
    official-speed-up target (None without that target or without the official backbone): the step the target
    allows, how far the full backbone is over it, what recomputing the per-sample weights costs, and the memory
    at which the backbone that keeps them runs instead."""
    targets = TARGETS.get(setting.spec, {})
    if OFFICIAL not in variants or "official train" not in targets:
        return None
    speedup = targets["official train"][0]
    base_mib = variants["base"]["mib"]
    memory_limit = targets.get("memory", (None,))[0]
    full, kept, official = variants["full FDConv"], variants[_KEPT], variants[OFFICIAL]

    def memory(v: dict[str, float]) -> str:
        return f"{v['mib'] / base_mib:.2f}x"

    allowed = official["ms"] / speedup
    return [
        ["official layers' training step", f"{official['ms']:.0f}", memory(official)],
        [
            f"allowed for the FDConv backbone (official / FDConv >= {speedup:g}x)",
            f"{allowed:.0f}",
            "-" if memory_limit is None else f"<= {memory_limit:g}x",
        ],
        ["full FDConv backbone over the allowance", f"{full['ms'] - allowed:.0f}", memory(full)],
        ["recomputing the per-sample weights (full minus weights kept)", f"{full['ms'] - kept['ms']:.0f}", "-"],
        ["weights kept, over the allowance", f"{kept['ms'] - allowed:.0f}", memory(kept)],
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--setting",
        type=Setting.parse,
        default=Setting("resnet50", 512, 512, 2),
        help="MODEL:HxW:BATCH (default resnet50:512x512:2)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--official",
        type=Path,
        metavar="PATH",
        help="your copy of the official FDConv.py: adds its backbone to the training step (ResNets)",
    )
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.setting.classifier:
        parser.error("profile a backbone (MODEL:HxW:BATCH without :classifier)")
    if args.official is not None and not args.setting.model.startswith("resnet"):
        parser.error("--official: the official layer has no token layout; profile a ResNet setting")
    try:
        official_cls = load_official_fdconv(args.official) if args.official else None
    except (OSError, RuntimeError) as exc:
        parser.error(str(exc))
    torch.set_num_threads(args.threads)
    print(f"{args.setting}, float32, {machine_description(torch.device('cpu'), args.threads)}\n")
    print("Eval, one no-grad forward, attributed to FDConv's parts:\n")
    ms = eval_attribution(args.setting, args.repeats)
    labels = [label for label in ms if label not in ("total", "base", "fdconv", INVERSE_FFT)]
    labels.insert(labels.index(EVAL_PARTS[1][0]) + 1, INVERSE_FFT)  # a sub-row of the weight images
    rows = [
        [f"  {label}" if label == INVERSE_FFT else label, f"{ms[label]:.0f}", f"{100 * ms[label] / ms['total']:.0f}%"]
        for label in labels
    ]
    rows += [
        ["FDConv backbone, in all (parts timed)", f"{ms['total']:.0f}", "100%"],
        ["FDConv backbone, untimed, round-robin with the base model", f"{ms['fdconv']:.0f}", "-"],
        [f"{args.setting.model} (the base model, round-robin)", f"{ms['base']:.0f}", "-"],
    ]
    print(format_table(["part", "ms", "share"], rows, args.markdown))
    budget = eval_budget(args.setting, ms)
    if budget is not None:
        print("\nEval against its target, from the times above:\n")
        print(format_table(["item", "ms", "/ base"], budget, args.markdown))
    print("\nTraining step (forward, loss, backward), ablations timed round-robin, and peak training memory:\n")
    variants = training_ablations(args.setting, args.repeats, official_cls)
    header = ["variant", "ms", "/ base", "ms less than full", "peak train MiB", "memory / base"]
    print(
        format_table(header + (["official / variant"] if official_cls else []), _ablation_rows(variants), args.markdown)
    )
    budget = official_training_budget(args.setting, variants)
    if budget is not None:
        print("\nTraining against the official-speed-up target, from the times above:\n")
        print(format_table(["item", "ms", "memory / base"], budget, args.markdown))


if __name__ == "__main__":
    main()
