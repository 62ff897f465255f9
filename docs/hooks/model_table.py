"""MkDocs hook: the timm model table of ``timm.md``, generated from timm's registry when the site is built.

A page writes ``<!-- timm-model-table -->`` where the table goes. Each registered ``*_fdconv`` architecture gets
a row: its pretrained tags (default first), the weights the default tag converts, the licences of the weights
(the source's, which the converted weights keep), and the parameters FDConv adds at the paper's settings, counted on
a model built on the meta device (no memory, no download).
"""

from __future__ import annotations

import functools
import math
import re

MARKER = "<!-- timm-model-table -->"
FAMILY_ORDER = ("resnet", "convnext", "swin", "mit")
# timm records NVIDIA's MiT weights as "other": the NVIDIA Source Code License for SegFormer (non-commercial).
LICENCE_NAMES = {"other": "NVIDIA Source Code License (SegFormer)"}


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, model_table())


def _sort_key(arch: str) -> tuple[int, int, str]:
    family = next((i for i, f in enumerate(FAMILY_ORDER) if arch.startswith(f)), len(FAMILY_ORDER))
    sizes = {"_atto": 0, "_tiny": 1, "_small": 2, "_base": 3}
    rank = next((v for k, v in sizes.items() if k in arch), None)
    if rank is None:  # resnet50, mit_b2
        digits = re.search(r"(\d+)_fdconv$", arch)
        rank = int(digits.group(1)) if digits else 0
    return family, rank, arch


def _added_parameters(model) -> tuple[int, int]:
    """Parameters FDConv adds over the plain layers it replaced, and the number of FDConv layers."""
    from fdconv_zoo import FDConv, count_parameters

    added = layers = 0
    for module in model.modules():
        if isinstance(module, FDConv) and module.use_fdconv:
            plain = module.out_channels * module.in_channels // module.groups * math.prod(module.kernel_size)
            plain += module.out_channels if module.bias is not None else 0
            added += count_parameters(module) - plain
            layers += 1
    return added, layers


def _licences(cfgs) -> str:
    """Each licence of the architecture's weights, with its tags when the tags differ."""
    by_licence: dict[str, list[str]] = {}
    for cfg in cfgs.values():
        by_licence.setdefault(LICENCE_NAMES.get(cfg.license, cfg.license or "unknown"), []).append(cfg.tag)
    if len(by_licence) == 1:
        return next(iter(by_licence))
    return "; ".join(f"{name}: {', '.join(f'`{t}`' for t in tags)}" for name, tags in by_licence.items())


@functools.cache
def model_table() -> str:
    import timm
    from timm.models import get_arch_pretrained_cfgs

    import fdconv_zoo

    rows = [
        "| model | default tag | other tags | default weights converted from | weight licences | parameters | added by FDConv | FDConv layers |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for arch in sorted(timm.list_models("*_fdconv"), key=_sort_key):
        cfgs = get_arch_pretrained_cfgs(arch)
        tags = [cfg.tag for cfg in cfgs.values()]
        model = timm.create_model(arch, device="meta")
        added, layers = _added_parameters(model)
        total = fdconv_zoo.count_parameters(model)
        share = 100 * added / (total - added)
        rows.append(
            f"| `{arch}` | `{tags[0]}` | {', '.join(f'`{t}`' for t in tags[1:]) or '-'} | `{next(iter(cfgs.values())).hf_hub_id}` | {_licences(cfgs)} "
            f"| {total / 1e6:.2f}M | +{added / 1e6:.2f}M (+{share:.0f}%) | {layers} |"
        )
    return "\n".join(rows)
