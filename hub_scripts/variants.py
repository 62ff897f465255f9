"""The publishable variants: every timm FDConv pretrained tag and a table of transformers checkpoints."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Variant", "all_variants", "get_variant"]

# timm tag fragments -> Hugging Face dataset ids (for the card's `datasets`).
_TAG_DATASETS = {"in1k": "imagenet-1k", "in22k": "imagenet-21k", "in12k": "timm/imagenet-12k-wds"}
_NVIDIA_LICENSE = dict(
    license_name="nvidia-segformer", license_link="https://github.com/NVlabs/SegFormer/blob/master/LICENSE"
)


@dataclass(frozen=True)
class Variant:
    """One Hub repo: where its source weights come from and how to build the FDConv model and its source."""

    name: str  # what the user types: 'resnet50_fdconv.tv_in1k' or 'fdconv-resnet-50'
    library: str  # 'timm' or 'transformers'
    source_repo: str  # Hub id of the source weights
    license: str
    datasets: tuple[str, ...]
    pipeline_tag: str
    fdconv_class: str = ""  # transformers: 'module:Class' of the FDConv model
    native_class: str = ""  # 'module:Class' of a transformers source model (transformers variants, timm MiT)
    license_extra: dict[str, str] = field(default_factory=dict)

    @property
    def repo_name(self) -> str:
        """Repo names mirror timm's (`<arch>.<tag>`) and the source's (transformers)."""
        return self.name

    def load_class(self, which: str) -> Any:
        module, _, attr = getattr(self, which).partition(":")
        return getattr(importlib.import_module(module), attr)


def _timm_variants() -> list[Variant]:
    import timm

    import fdconv_zoo  # noqa: F401  (registers the FDConv architectures)

    variants = []
    for name in timm.list_pretrained("*_fdconv.*"):
        cfg = timm.models.get_pretrained_cfg(name)
        tag = name.partition(".")[2]
        datasets = tuple(ds for frag, ds in _TAG_DATASETS.items() if frag in tag.split("_"))
        if cfg.hf_hub_id.startswith("timm/"):
            variants.append(
                Variant(name, "timm", cfg.hf_hub_id, cfg.license or "other", datasets, "image-classification")
            )
        else:  # a transformers checkpoint converted by the timm model's filter (MiT: nvidia/mit-b*)
            variants.append(
                Variant(
                    name,
                    "timm",
                    cfg.hf_hub_id,
                    "other",
                    datasets,
                    "image-classification",
                    native_class="transformers:AutoModelForImageClassification",
                    license_extra=_NVIDIA_LICENSE,
                )
            )
    return variants


def _transformers_variants() -> list[Variant]:
    tfm = "fdconv_zoo.transformers_models"
    auto = "transformers"
    table = [
        (
            "fdconv-resnet-50",
            "microsoft/resnet-50",
            f"{tfm}.resnet:FDConvResNetForImageClassification",
            "apache-2.0",
            {},
        ),
        (
            "fdconv-convnext-tiny-224",
            "facebook/convnext-tiny-224",
            f"{tfm}.convnext:FDConvConvNextForImageClassification",
            "apache-2.0",
            {},
        ),
        (
            "fdconv-swin-tiny-patch4-window7-224",
            "microsoft/swin-tiny-patch4-window7-224",
            f"{tfm}.swin:FDConvSwinForImageClassification",
            "apache-2.0",
            {},
        ),
    ]
    variants = [
        Variant(
            name,
            "transformers",
            src,
            lic,
            ("imagenet-1k",),
            "image-classification",
            cls,
            f"{auto}:AutoModelForImageClassification",
            extra,
        )
        for name, src, cls, lic, extra in table
    ]
    for size in range(6):
        variants.append(
            Variant(
                f"fdconv-mit-b{size}",
                "transformers",
                f"nvidia/mit-b{size}",
                "other",
                ("imagenet-1k",),
                "image-classification",
                f"{tfm}.segformer:FDConvSegformerForImageClassification",
                f"{auto}:AutoModelForImageClassification",
                _NVIDIA_LICENSE,
            )
        )
        resolution = 640 if size == 5 else 512
        variants.append(
            Variant(
                f"fdconv-segformer-b{size}-finetuned-ade-{resolution}-{resolution}",
                "transformers",
                f"nvidia/segformer-b{size}-finetuned-ade-{resolution}-{resolution}",
                "other",
                ("scene_parse_150",),
                "image-segmentation",
                f"{tfm}.segformer:FDConvSegformerForSemanticSegmentation",
                f"{auto}:AutoModelForSemanticSegmentation",
                _NVIDIA_LICENSE,
            )
        )
    return variants


def all_variants() -> dict[str, Variant]:
    """Every publishable variant by name, timm tags first."""
    return {v.name: v for v in (*_timm_variants(), *_transformers_variants())}


def get_variant(name: str) -> Variant:
    variants = all_variants()
    if name not in variants:
        raise KeyError(f"unknown variant {name!r}. Valid variants ({len(variants)}): " + ", ".join(variants))
    return variants[name]
