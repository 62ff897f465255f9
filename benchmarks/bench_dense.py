"""FDConv backbones at dense-prediction resolution against their base models (and the official layer).

    python benchmarks/bench_dense.py --official ~/FDConv/FDConv_detection/mmdet_custom/FDConv.py --compile --markdown
    python benchmarks/bench_dense.py --settings resnet50:512x512:2           # one row
    python benchmarks/bench_dense.py --device cuda --dtype bfloat16 --compile
    python benchmarks/bench_dense.py --keep-weights                          # per-sample weights kept: memory for speed
    python benchmarks/bench_dense.py --quick                                 # smoke run, seconds

FDConv is a dense-prediction method (the paper: 512x512 ADE20K crops, 1333x800 COCO), so these rows are what
counts: ``features_only`` backbones (what a detection or segmentation head consumes) at 512x512 batch 2 and
800x1333 batch 1, plus the 224x224 batch 8 classifier for reference. A setting is ``MODEL:HxW:BATCH``, with
``:classifier`` for the whole classifier. Each base model and its ``_fdconv`` variant (random init) are built
and timed in the same process, round-robin, as medians after warm-up: eval is a no-grad forward, a training
step is forward, a scalar loss over every output and backward. Each ratio of medians comes with the smallest and
largest ratio within one round, where the two models ran back to back: on a shared machine whose speed drifts,
that range shows how far a ratio can move within one run. The official column (``--official PATH``, your
own copy of its ``FDConv.py``) is the same FDConv backbone with every FDConv layer replaced by the official
layer loaded with the same state dict (its output is checked to match); it applies to the ResNets, whose
FDConv layers are convolutions (the other families use FDConv in token layout, which the official layer lacks).
Peak training memory is that of one training step: tensors allocated above what was allocated before it
(CUDA: ``max_memory_allocated``; CPU: the profiler's allocation events). ``--compile`` adds torch.compile rows
(inductor) for the settings it names (default: the first ResNet setting).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timm  # noqa: E402
from _common import (  # noqa: E402
    Target,
    format_ms,
    format_pair,
    format_table,
    load_official_fdconv,
    logger,
    machine_description,
    medians,
    peak_memory_mib,
    quiet,
    ratio_range,
    round_robin_times,
)

from fdconv_zoo import FDConv  # noqa: E402

__all__ = [
    "DEFAULT_SETTINGS",
    "Setting",
    "activate_attentions",
    "main",
    "official_backbone",
    "training_or_eval_step",
    "with_official_layers",
]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the table: a base timm model at an input size and batch, as a backbone or a classifier."""

    model: str
    height: int
    width: int
    batch: int
    classifier: bool = False

    @classmethod
    def parse(cls, text: str) -> Setting:
        parts = text.split(":")
        try:
            if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "classifier"):
                raise ValueError
            height, width = (int(v) for v in parts[1].lower().split("x"))
            setting = cls(parts[0], height, width, int(parts[2]), len(parts) == 4)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"setting {text!r}: write MODEL:HxW:BATCH[:classifier], e.g. resnet50:512x512:2"
            ) from None
        if min(setting.height, setting.width, setting.batch) < 1:
            raise argparse.ArgumentTypeError(f"setting {text!r}: size and batch must be positive")
        return setting

    def __str__(self) -> str:
        return f"{self.model} {self.height}x{self.width} b{self.batch}" + (" classifier" if self.classifier else "")

    @property
    def spec(self) -> str:
        return f"{self.model}:{self.height}x{self.width}:{self.batch}" + (":classifier" if self.classifier else "")

    def create(self, name: str, **model_kwargs: object) -> nn.Module:
        kwargs = dict(model_kwargs) if self.classifier else {"features_only": True, **model_kwargs}
        if "swin" in name or "mit" in name:
            kwargs["img_size"] = (self.height, self.width)  # attention windows and position tables follow the input
        return timm.create_model(name, **kwargs)


DEFAULT_SETTINGS = [
    Setting("resnet50", 512, 512, 2),
    Setting("convnext_tiny", 512, 512, 2),
    Setting("swin_tiny_patch4_window7_224", 512, 512, 2),
    Setting("resnet50", 800, 1333, 1),
    Setting("resnet50", 224, 224, 8, classifier=True),
]
# The project's targets: FDConv / base (at most) and official / FDConv (at least), eager float32 on the CPU.
TARGETS: dict[str, dict[str, tuple[float, bool]]] = {
    "resnet50:512x512:2": {
        "eval": (1.5, True),
        "train": (2.0, True),
        "memory": (1.5, True),
        "official eval": (2.5, False),
        "official train": (1.7, False),
    },
    "convnext_tiny:512x512:2": {"eval": (1.5, True), "train": (2.0, True)},
    "swin_tiny_patch4_window7_224:512x512:2": {"eval": (1.5, True), "train": (2.0, True)},
    "resnet50:224x224:8:classifier": {"eval": (2.5, True), "train": (3.0, True)},
}


def with_official_layers(model: nn.Module, official_cls: type) -> nn.Module:
    """``model`` with every FDConv layer (convolution layout) replaced by the official layer with the same
    arguments and state dict; raises if a layer cannot be carried over (token layout, a non-default option)."""
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, FDConv) or not layer.use_fdconv:
            continue
        if layer.token_layout:
            raise ValueError(
                f"{name}: the official layer has no token layout; the official column needs a convolutional backbone"
            )
        with quiet():  # it prints a line per layer it builds
            official = official_cls(
                layer.in_channels,
                layer.out_channels,
                kernel_size=layer.kernel_size,
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=layer.groups,
                bias=layer.bias is not None,
                kernel_num=layer.kernel_num,
            )
        official.load_state_dict(layer.state_dict(), strict=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, official)
    return model


def official_backbone(setting: Setting, fdconv: nn.Module, official_cls: type) -> nn.Module:
    """A new FDConv backbone of ``setting`` with the official layers (:func:`with_official_layers`), holding
    every parameter and buffer of ``fdconv``, the FDConv backbone it is timed against."""
    model = with_official_layers(setting.create(f"{setting.model}_fdconv"), official_cls)
    model.load_state_dict(fdconv.state_dict())
    return model


def activate_attentions(model: nn.Module) -> None:
    """Small random attention heads, as after training: at init every FDConv is exactly its static
    convolution, which would make the check against the official layer trivial. (Times do not depend on
    the values, as long as they stay in range: float32 denormals, as from attentions saturated by exploding
    activations, slow the CPU down several times, so the residual branches keep timm's init.)"""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, FDConv):
                for part in ("KSM_Global", "KSM_Local", "FBM"):
                    for p in getattr(layer, part).parameters() if hasattr(layer, part) else ():
                        p.add_(torch.randn_like(p), alpha=0.02)


def _loss(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A scalar over every output (the classifier's logits, or each stage's features), cheap next to the model."""
    if isinstance(output, torch.Tensor):
        return output.float().logsumexp(1).mean()
    return sum(f.float().mean() for f in output)


def training_or_eval_step(
    model: nn.Module, x: torch.Tensor, train: bool, dtype: torch.dtype | None
) -> Callable[[], None]:
    def run() -> None:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            if train:
                model.zero_grad(set_to_none=True)
                _loss(model(x)).backward()
            else:
                with torch.no_grad():
                    model(x)

    return run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--settings",
        nargs="+",
        type=Setting.parse,
        default=DEFAULT_SETTINGS,
        metavar="MODEL:HxW:B",
        help="rows (default: the five above)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads); default 2")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="autocast dtype")
    p.add_argument(
        "--official",
        type=Path,
        metavar="PATH",
        help="your copy of the official FDConv.py: adds the official columns (ResNets)",
    )
    p.add_argument(
        "--compile",
        nargs="*",
        type=Setting.parse,
        metavar="MODEL:HxW:B",
        help="add torch.compile rows for these settings (none given: the first ResNet setting)",
    )
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed runs per model and row (at least 1: it checks the variant works)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per model (at most)")
    p.add_argument(
        "--budget",
        type=float,
        default=20.0,
        help="seconds of timed runs after which a slow model stops early (>= 3 runs)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak training memory column")
    p.add_argument(
        "--keep-weights",
        action="store_true",
        help="FDConv models keep their per-sample weights for backward (fdconv_cfg=dict(recompute_weight=False)) "
        "instead of recomputing them in deep layers: the speed-memory trade-off of training",
    )
    p.add_argument(
        "--markdown", action="store_true", help="GitHub Markdown table with a header line naming the machine"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: resnet18 at 64x64 batch 2, one timed run")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table; returns the measured numbers (for tests and scripting)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.settings, args.warmup, args.repeats = [Setting("resnet18", 64, 64, 2)], 1, 1
        args.compile = None if args.compile is None else []
    if min(args.threads, args.repeats) < 1 or args.warmup < 1:
        parser.error("--threads and --repeats must be >= 1, --warmup >= 1")
    unknown = [s.model for s in args.settings if not timm.is_model(s.model) or not timm.is_model(f"{s.model}_fdconv")]
    if unknown:
        choices = ", ".join(sorted(m[: -len("_fdconv")] for m in timm.list_models("*_fdconv")))
        parser.error(f"--settings: no FDConv variant for {', '.join(unknown)}; choose from {choices}")
    compiled = _compile_settings(args)
    try:
        official_cls = load_official_fdconv(args.official) if args.official else None
    except (OSError, RuntimeError) as exc:
        parser.error(str(exc))
    logging.basicConfig(format="%(message)s", level=logging.INFO if args.verbose else logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)

    rows: dict[tuple[Setting, str], dict] = {}  # (setting, variant) -> {mode: {name: ms}, memory, official match}
    fdconv_kwargs = {"fdconv_cfg": {"recompute_weight": False}} if args.keep_weights else {}
    for setting in args.settings:
        torch.manual_seed(0)
        base, fdconv = setting.model, f"{setting.model}_fdconv"
        models = {base: setting.create(base).to(device), fdconv: setting.create(fdconv, **fdconv_kwargs).to(device)}
        x = torch.randn(setting.batch, 3, setting.height, setting.width, device=device)
        activate_attentions(models[fdconv])
        match = None
        if official_cls is not None and setting.model.startswith("resnet"):
            models["official"] = official_backbone(setting, models[fdconv], official_cls).to(device)
            match = _max_relative_difference(models[fdconv], models["official"], x)
        for variant in ["eager"] + (["compiled"] if setting in compiled else []):
            row: dict = {"official match": match if variant == "eager" else None, "rounds": {}}
            if variant == "compiled":
                torch._dynamo.reset()  # fresh caches: no silent fall-back to eager at the recompile limit
            for mode in ("eval", "train"):
                logger.info("%s %s %s", setting, variant, mode)
                fns, row[mode] = {}, {}
                for name, model in models.items():
                    if name == "official" and variant != "eager":
                        continue  # the official layer is compared as it is used: eager
                    model.train(mode == "train")
                    try:
                        fn = training_or_eval_step(
                            torch.compile(model) if variant == "compiled" else model, x, mode == "train", dtype
                        )
                        fn()  # the first warm-up run; fails here if the variant does not work for this model
                        fns[name] = fn
                    except Exception as exc:  # noqa: BLE001  (reported in the table as "fails")
                        logger.warning(
                            "%s %s %s: %s fails (%s: %s)",
                            setting,
                            variant,
                            mode,
                            name,
                            type(exc).__name__,
                            str(exc)[:200],
                        )
                        row[mode][name] = None
                rounds = round_robin_times(fns, device, args.warmup - 1, args.repeats, args.budget)
                row[mode].update(medians(rounds))
                row["rounds"][mode] = rounds
            if variant == "eager" and not args.no_memory:
                row["memory"] = {}
                for name in (base, fdconv):
                    models[name].train().zero_grad(set_to_none=True)
                    row["memory"][name] = peak_memory_mib(training_or_eval_step(models[name], x, True, dtype), device)
            rows[(setting, variant)] = row
        del models

    kept = (
        " FDConv models keep their per-sample weights for backward (recompute_weight=False)."
        if args.keep_weights
        else ""
    )
    header_line = (
        f"{args.dtype}, {device}; {machine_description(device, args.threads)}.{kept} Median ms per forward (eval) or training "
        "step; cells are base / FDConv model; ratios FDConv / base, and official / FDConv (the speed-up over the official layer): "
        "ratios of the medians, in brackets the smallest and largest ratio within one round (the two ran back to back)."
    )
    targets = _targets(rows)
    out = [
        f"**Dense-resolution benchmark.** {header_line}" if args.markdown else header_line,
        "",
        _table(rows, official_cls is not None, args.markdown),
        "",
    ]
    matches = [r["official match"] for r in rows.values() if r["official match"] is not None]
    if matches:
        out.append(
            f"official vs FDConv layers (same state dict, each on the input it gets in the backbone, eval): max relative difference {max(matches):.1e}"
        )
        if max(matches) > 1e-4:
            out.append(
                "WARNING: the official backbone computes a different function here; its times compare unlike models"
            )
    out.append("Targets (eager, float32):" if args.markdown else "Targets:")
    out += [("- " if args.markdown else "  ") + t.line() for t in targets]
    print("\n".join(out))
    return {"rows": rows, "targets": targets}


def _compile_settings(args: argparse.Namespace) -> list[Setting]:
    if args.compile is None:
        return []
    if args.compile:
        missing = [str(s) for s in args.compile if s not in args.settings]
        if missing:
            raise SystemExit(f"--compile: {', '.join(missing)} not among --settings; add them there")
        return list(args.compile)
    return [next((s for s in args.settings if s.model.startswith("resnet")), args.settings[0])]


def _max_relative_difference(ours: nn.Module, official: nn.Module, x: torch.Tensor) -> float:
    """Largest relative difference between each FDConv layer and its official counterpart on the input the
    layer gets in ``ours`` (eval). Layer by layer: through a random-weight network float32 rounding grows
    with depth, so whole-model outputs would not tell a different function from rounding."""
    inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        layer.register_forward_hook(lambda _, args, out, name=name: inputs.__setitem__(name, (args[0], out)))
        for name, layer in ours.named_modules()
        if isinstance(layer, FDConv) and layer.use_fdconv
    ]
    try:
        with torch.no_grad():
            ours.eval()(x)
            official.eval()
            return max(
                ((official.get_submodule(name)(inp) - out).abs().max() / out.abs().max()).item()
                for name, (inp, out) in inputs.items()
            )
    finally:
        for hook in hooks:
            hook.remove()


def _ratio(num: float | None, den: float | None) -> str:
    return "-" if not num or not den else f"{num / den:.2f}x"


def _time_ratio(row: dict, mode: str, num: str, den: str) -> str:
    """The ratio of two models' median times in ``mode``, with its range within rounds."""
    text = _ratio(row[mode].get(num), row[mode].get(den))
    spread = _round_range(row, mode, num, den)
    return text if spread is None else f"{text} ({spread[0]:.2f}-{spread[1]:.2f})"


def _round_range(row: dict, mode: str, num: str, den: str) -> tuple[float, float] | None:
    rounds = row["rounds"].get(mode, {})
    return ratio_range(rounds[num], rounds[den]) if num in rounds and den in rounds else None


def _table(rows: dict, official: bool, markdown: bool) -> str:
    header = ["setting", "eval ms", "eval ratio", "train step ms", "train ratio", "peak train MiB", "memory ratio"]
    header += (
        ["official eval ms", "official / FDConv eval", "official train ms", "official / FDConv train"]
        if official
        else []
    )
    table = []
    for (setting, variant), r in rows.items():
        base, fdconv = setting.model, f"{setting.model}_fdconv"
        mem = r.get("memory")
        line = [
            str(setting) if variant == "eager" else f"{setting} {variant}",
            format_pair(r["eval"].get(base), r["eval"].get(fdconv)),
            _time_ratio(r, "eval", fdconv, base),
            format_pair(r["train"].get(base), r["train"].get(fdconv)),
            _time_ratio(r, "train", fdconv, base),
            format_pair(mem[base], mem[fdconv]) if mem else "-",
            _ratio(mem[fdconv], mem[base]) if mem else "-",
        ]
        if official:
            has = "official" in r["eval"]
            line += [
                format_ms(r["eval"]["official"]) if has else "-",
                _time_ratio(r, "eval", "official", fdconv),
                format_ms(r["train"]["official"]) if has else "-",
                _time_ratio(r, "train", "official", fdconv),
            ]
        table.append(line)
    return format_table(header, table, markdown)


def _targets(rows: dict) -> list[Target]:
    targets = []
    for (setting, variant), r in rows.items():
        goals = TARGETS.get(setting.spec) if variant == "eager" else None
        for what, (limit, at_most) in (goals or {}).items():
            base, fdconv = setting.model, f"{setting.model}_fdconv"
            if what.startswith("official"):
                mode = what.split()[1]
                num, den = r[mode].get("official"), r[mode].get(fdconv)
                description = f"{setting}: official / FDConv {mode}"
                spread = _round_range(r, mode, "official", fdconv)
            else:
                source = r.get("memory", {}) if what == "memory" else r[what]
                num, den = source.get(fdconv), source.get(base)
                description = f"{setting}: FDConv / base {what}"
                spread = None if what == "memory" else _round_range(r, what, fdconv, base)
            measured = {setting.model: num / den} if num and den else {}
            targets.append(Target(description, limit, at_most, measured, {setting.model: spread} if measured else {}))
    return targets


if __name__ == "__main__":
    main()
