"""Convert, verify and publish fdconv-zoo variants to the Hugging Face Hub, one repo per variant.

    python hub_scripts/publish.py resnet50_fdconv.tv_in1k --org ORG --dry-run
    python hub_scripts/publish.py --all --org ORG

Each variant: load its source weights -> convert -> verify (outputs equal the source's on a fixed probe
batch, else the variant stops and nothing is uploaded) -> stage model.safetensors, config(s) and a model
card in --out -> upload the changed files in one commit and add the repo to the org's collection.
The token comes from huggingface_hub's usual sources (HF_TOKEN, `hf auth login`) and is never printed.
Bad input (an unknown variant, a staging folder that cannot be written or already holds staged files, a missing
source checkpoint, no token for an upload) ends with one line on stderr and exit status 2, as in `fdconv-zoo`
(`--debug` or FDCONV_ZOO_DEBUG=1 adds the traceback); a variant that fails to convert or upload is reported in
the summary and the exit status is 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from tqdm.auto import tqdm

from fdconv_zoo.cli import OneLineErrorParser, run_reporting_input_errors
from fdconv_zoo.cli_types import positive_float
from fdconv_zoo.errors import InputError, MissingInputError, OutputExistsError
from fdconv_zoo.output_paths import check_writable
from hub_scripts.staged import StagedVariant
from hub_scripts.staging import VerificationError, stage_variant
from hub_scripts.upload import add_to_collection, upload_folder_if_changed
from hub_scripts.variants import Variant, all_variants, get_variant

__all__ = ["main", "parse_args"]

_logger = logging.getLogger("hub_scripts.publish")
COLLECTION_TITLE = "FDConv zoo"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(
        prog="publish.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "variants",
        nargs="*",
        help="pretrained tags (resnet50_fdconv.tv_in1k) or transformers variants (fdconv-resnet-50)",
    )
    parser.add_argument("--all", action="store_true", help="publish every variant")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--org", help="Hub namespace (user or organisation) to publish to")
    parser.add_argument(
        "--source-checkpoint",
        type=Path,
        help="local source weights instead of downloading them (one variant only): "
        "a .safetensors/.pth file for timm variants, a checkpoint folder for transformers variants",
    )
    parser.add_argument("--out", type=Path, default=Path("hub_staging"), help="staging folder (default: ./hub_staging)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing staged folders")
    parser.add_argument("--dry-run", action="store_true", help="stage and verify only; no upload")
    parser.add_argument("--private", action="store_true", help="create new repos as private")
    parser.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    parser.add_argument("--commit-message", default="Upload FDConv weights converted by fdconv-zoo")
    parser.add_argument(
        "--max-rel-error", type=positive_float, default=1e-4, help="verification tolerance (default 1e-4)"
    )
    parser.add_argument("--debug", action="store_true", help="on an input error, show its traceback too")
    args = parser.parse_args(argv)
    if args.list:
        return args
    if bool(args.variants) == args.all:
        parser.error("name the variants to publish, or pass --all (see --list)")
    if not args.org:
        parser.error("--org is required (the Hub namespace the repos go to)")
    if args.source_checkpoint is not None and (args.all or len(args.variants) != 1):
        parser.error("--source-checkpoint applies to exactly one variant")
    return args


def _summary(rows: list[tuple[str, str, str, str, str]]) -> str:
    header = ("variant", "params M (source -> FDConv)", "GFLOPs", "max rel. error", "status")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def main(argv: Sequence[str] | None = None, api: HfApi | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return run_reporting_input_errors("publish.py", partial(_publish, args, api), debug=args.debug)


def _checked_variants(args: argparse.Namespace, api: HfApi | None) -> list[Variant]:
    """The variants to publish, once every input is known to be usable (before any download or conversion)."""
    try:
        variants = list(all_variants().values()) if args.all else [get_variant(name) for name in args.variants]
    except KeyError as e:
        raise InputError(f"{e.args[0]} (see --list)") from None
    check_writable(args.out, "--out", folder=True)
    clashes = [
        v.repo_name for v in variants if (args.out / v.repo_name).is_dir() and any((args.out / v.repo_name).iterdir())
    ]
    if clashes and not args.overwrite:
        raise OutputExistsError(
            f"{args.out} already holds staged folders {', '.join(clashes)}; pass --overwrite to replace them"
        )
    if args.source_checkpoint is not None and not args.source_checkpoint.exists():
        raise MissingInputError(f"--source-checkpoint {args.source_checkpoint} does not exist; check the path")
    if not args.dry_run and api is None and get_token() is None:
        raise InputError(
            "no Hugging Face token to upload with: set HF_TOKEN or run `hf auth login` (a token that can write to "
            f"{args.org}), or pass --dry-run to stage and verify only"
        )
    return variants


def _publish(args: argparse.Namespace, api: HfApi | None) -> int:
    if args.list:
        for name, v in all_variants().items():
            _logger.info("%-58s %-12s <- %s", name, v.library, v.source_repo)
        return 0
    variants = _checked_variants(args, api)
    api = api or HfApi()
    rows, published, failed = [], [], 0
    for variant in tqdm(variants, desc="variants", unit="variant"):
        repo_id = f"{args.org}/{variant.repo_name}"
        try:
            staged: StagedVariant = stage_variant(
                variant,
                args.out,
                org=args.org,
                source_checkpoint=args.source_checkpoint,
                tolerance=args.max_rel_error,
                overwrite=args.overwrite,
            )
        except (VerificationError, ValueError, FileNotFoundError, FileExistsError, OSError) as e:
            failed += 1
            _logger.error("%s: %s", variant.name, e)
            rows.append((variant.name, "-", "-", "-", f"FAILED: {type(e).__name__}"))
            continue
        status = "staged (dry run)"
        if not args.dry_run:
            try:
                status = upload_folder_if_changed(
                    api,
                    repo_id,
                    Path(staged.folder),
                    private=args.private,
                    revision=args.revision,
                    commit_message=args.commit_message,
                )
                published.append(repo_id)
            except (HfHubHTTPError, OSError) as e:  # network or server failure: the commit did not happen
                failed += 1
                status = f"FAILED upload ({type(e).__name__}); re-run with --overwrite to complete it"
                _logger.error("%s: upload failed: %s", repo_id, e)
        rows.append(
            (
                variant.name,
                f"{staged.params_source / 1e6:.2f} -> {staged.params_fdconv / 1e6:.2f}",
                f"{staged.gflops_source:.2f} -> {staged.gflops_fdconv:.2f}",
                f"{staged.max_rel_error:.1e}",
                status,
            )
        )
    if published:
        slug = add_to_collection(api, args.org, COLLECTION_TITLE, published)
        _logger.info("collection: %s", slug)
    _logger.info("\n%s", _summary(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
