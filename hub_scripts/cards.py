"""Model cards rendered from the templates in model_cards/ with huggingface_hub's ModelCard."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .staged import StagedVariant
from .variants import Variant

__all__ = ["TEMPLATES", "render_card"]

TEMPLATES = Path(__file__).resolve().parent.parent / "model_cards"

CITATION = """@inproceedings{chen2025fdconv,
  title     = {Frequency Dynamic Convolution for Dense Image Prediction},
  author    = {Chen, Linwei and Gu, Lin and Li, Liang and Yan, Chenggang and Fu, Ying},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2025}
}"""


def render_card(variant: Variant, staged: StagedVariant, *, org: str) -> ModelCard:
    """The card of one staged variant: front matter for the Hub, then what it is, its cost, its check and its use."""
    data = ModelCardData(
        library_name=variant.library,
        license=variant.license,
        base_model=variant.source_repo,
        base_model_relation="finetune",  # derived weights; the card says they are an exact conversion
        pipeline_tag=variant.pipeline_tag,
        datasets=list(variant.datasets),
        tags=["fdconv", "frequency-dynamic-convolution", variant.library, variant.pipeline_tag],
        **variant.license_extra,
    )
    template = (TEMPLATES / f"{variant.library}.md").read_text()
    return ModelCard.from_template(
        data,
        template_str=template,
        repo_id=f"{org}/{variant.repo_name}",
        variant=variant.name,
        source=variant.source_repo,
        params_source=f"{staged.params_source / 1e6:.2f}",
        params_fdconv=f"{staged.params_fdconv / 1e6:.2f}",
        params_added=f"{(staged.params_fdconv - staged.params_source) / 1e6:.2f}",
        gflops_source=f"{staged.gflops_source:.2f}",
        gflops_fdconv=f"{staged.gflops_fdconv:.2f}",
        gflops_added=f"{staged.gflops_fdconv - staged.gflops_source:.2f}",
        input_size="x".join(str(s) for s in staged.input_size[1:]),
        max_rel_error=f"{staged.max_rel_error:.1e}",
        tolerance=f"{staged.tolerance:.0e}",
        fdconv_class=variant.fdconv_class.rpartition(":")[2],
        citation=CITATION,
    )
