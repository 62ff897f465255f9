"""hub_scripts/publish.py end to end on a small source checkpoint, offline.

No Hub server can run here, so the upload is tested up to huggingface_hub's client calls: a recording
stand-in for HfApi answers ``get_paths_info`` with real ``RepoFile`` objects and records the commits.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx2 as httpx  # huggingface_hub 2.x HTTP client
import pytest
import timm
import torch
from fdconv_testing import randomize_norms, relative_error
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils.sha import git_hash, sha_fileobj
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

import fdconv_zoo  # noqa: F401
from hub_scripts.publish import main
from hub_scripts.staging import load_source_state_dict
from hub_scripts.upload import upload_folder_if_changed

VARIANT = "resnet18_fdconv.tv_in1k"
ORG = "fdconv-test"


class RecordingApi:
    """Records what publish asks of the Hub; keeps a remote file table like the Hub's paths-info answers."""

    def __init__(self, fail_commit: bool = False):
        self.calls: list[tuple] = []
        self.remote: dict[str, dict[str, RepoFile]] = {}
        self.fail_commit = fail_commit

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def get_paths_info(self, repo_id, paths, revision=None, **kwargs):
        files = self.remote.get(repo_id, {})
        return [files[p] for p in paths if p in files]

    def create_commit(self, repo_id, operations, commit_message, revision=None, **kwargs):
        self.calls.append(
            ("create_commit", repo_id, sorted(op.path_in_repo for op in operations), commit_message, revision)
        )
        if self.fail_commit:
            request = httpx.Request("POST", f"https://huggingface.co/api/models/{repo_id}/commit/main")
            raise HfHubHTTPError(
                "503 Service Unavailable (simulated interruption)", response=httpx.Response(503, request=request)
            )
        for op in operations:
            data = Path(op.path_or_fileobj).read_bytes()
            lfs = None
            if op.path_in_repo.endswith(".safetensors"):
                with open(op.path_or_fileobj, "rb") as f:
                    lfs = {"size": len(data), "oid": sha_fileobj(f).hex(), "pointerSize": 134}
            self.remote.setdefault(repo_id, {})[op.path_in_repo] = RepoFile(
                path=op.path_in_repo, size=len(data), oid=git_hash(data), lfs=lfs
            )
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abcd")

    def create_collection(self, title, namespace=None, **kwargs):
        self.calls.append(("create_collection", title, namespace, kwargs.get("exists_ok")))
        return SimpleNamespace(slug=f"{namespace}/fdconv-zoo-0123")

    def add_collection_item(self, slug, item_id, item_type, **kwargs):
        self.calls.append(("add_collection_item", slug, item_id, item_type, kwargs.get("exists_ok")))

    def named(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


def _source_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """Random source weights with non-trivial BatchNorms (timm zero-inits the last BN of each block,
    which would make every residual conv irrelevant to the output and the verification vacuous)."""
    torch.manual_seed(0)
    model = randomize_norms(timm.create_model(arch))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("source") / "resnet18.safetensors"
    save_file(_source_state_dict("resnet18"), path)
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory, source_checkpoint):
    """One real publish run (staging, verification, card, upload calls) shared by the tests below."""
    out = tmp_path_factory.mktemp("staging")
    api = RecordingApi()
    code = main([VARIANT, "--org", ORG, "--source-checkpoint", str(source_checkpoint), "--out", str(out)], api=api)
    return SimpleNamespace(code=code, out=out, folder=out / VARIANT, api=api, source=source_checkpoint)


def test_publish_stages_the_expected_files(published):
    assert published.code == 0
    assert sorted(p.name for p in published.folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((published.folder / "config.json").read_text())
    assert config["architecture"] == "resnet18_fdconv"
    assert "num_classes" not in config.get("model_args", {})
    with safe_open(str(published.folder / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert "layer1.0.conv1.dft_weight" in f.keys() and "layer1.0.conv1.weight" not in f.keys()
    assert meta["fdconv_source"] == "timm/resnet18.tv_in1k"
    assert float(meta["fdconv_verified_max_rel_error"]) <= 1e-4


def test_staged_folder_loads_in_timm_and_transformers(published, hub_repo):
    repo_id = f"{ORG}/{VARIANT}"
    hub_repo(repo_id, {p.name: p for p in published.folder.iterdir()})
    source = timm.create_model(
        "resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(published.source))
    ).eval()
    model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = source(x)
        assert relative_error(model(x), expected) <= 1e-4
        from transformers import AutoModelForImageClassification

        wrapped = AutoModelForImageClassification.from_pretrained(repo_id).eval()
        assert relative_error(wrapped(pixel_values=x).logits, expected) <= 1e-4


def test_card_parses_and_carries_the_metadata(published):
    card = ModelCard.load(published.folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "timm" and data["license"] == "bsd-3-clause"
    assert data["base_model"] == "timm/resnet18.tv_in1k" and data["base_model_relation"] == "finetune"
    assert data["pipeline_tag"] == "image-classification" and data["datasets"] == ["imagenet-1k"]
    assert "fdconv" in data["tags"]
    meta = json.loads(json.dumps(data))  # plain YAML types only
    assert meta == data
    text = card.text
    for section in (
        "## Verification",
        "## Usage",
        "import fdconv_zoo",
        f"hf-hub:{ORG}/{VARIANT}",
        "## Citation",
        "@inproceedings{chen2025fdconv",
        "## License",
    ):
        assert section in text
    assert "maximum relative error of" in text and "GFLOPs at 224x224" in text


def test_card_cost_matches_flop_counter_mode(published):
    """The card's source GFLOPs are torch's FlopCounterMode total on the plain model; the FDConv figure is
    fdconv_zoo.count_flops, whose non-FDConv part is the same source count."""
    row = next(
        line
        for line in ModelCard.load(published.folder / "README.md").text.splitlines()
        if line.startswith("| GFLOPs at")
    )
    source_gflops, fdconv_gflops = (float(cell.split()[0]) for cell in row.strip("|").split("|")[1:3])
    source = timm.create_model("resnet18").eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        source(torch.zeros(1, 3, 224, 224))
    assert source_gflops == round(counter.get_total_flops() / 1e9, 2)
    fdconv = fdconv_zoo.count_flops(timm.create_model("resnet18_fdconv"), (3, 224, 224))
    assert fdconv_gflops == round(fdconv.gflops, 2) > source_gflops
    assert fdconv.breakdown["convolution"] + fdconv.breakdown["rest"] == counter.get_total_flops()


def test_upload_is_one_commit_then_collection(published):
    api = published.api
    repo_id = f"{ORG}/{VARIANT}"
    assert api.named("create_repo") == [
        ("create_repo", repo_id, {"repo_type": "model", "private": False, "exist_ok": True})
    ]
    commits = api.named("create_commit")
    assert commits == [
        (
            "create_commit",
            repo_id,
            ["README.md", "config.json", "model.safetensors"],
            "Upload FDConv weights converted by fdconv-zoo",
            None,
        )
    ]
    assert api.named("create_collection") == [("create_collection", "FDConv zoo", ORG, True)]
    assert api.named("add_collection_item") == [
        ("add_collection_item", f"{ORG}/fdconv-zoo-0123", repo_id, "model", True)
    ]


def test_rerun_uploads_only_what_changed(published, tmp_path):
    api = published.api
    repo_id = f"{ORG}/{VARIANT}"
    assert upload_folder_if_changed(api, repo_id, published.folder, commit_message="again") == "unchanged"
    assert len(api.named("create_commit")) == 1
    folder = tmp_path / "edited"
    shutil.copytree(published.folder, folder)
    (folder / "README.md").write_text((folder / "README.md").read_text() + "\nedited\n")
    assert upload_folder_if_changed(api, repo_id, folder, commit_message="card").startswith("uploaded")
    assert api.named("create_commit")[-1][2] == ["README.md"]


def test_interrupted_upload_is_completed_by_a_rerun(published):
    failing = RecordingApi(fail_commit=True)
    with pytest.raises(HfHubHTTPError):
        upload_folder_if_changed(failing, "org/x", published.folder, commit_message="m")
    assert failing.remote == {}  # a commit is atomic: nothing landed
    failing.fail_commit = False
    assert upload_folder_if_changed(failing, "org/x", published.folder, commit_message="m").startswith("uploaded")
    assert upload_folder_if_changed(failing, "org/x", published.folder, commit_message="m") == "unchanged"
    assert [c[2] for c in failing.named("create_commit")] == [["README.md", "config.json", "model.safetensors"]] * 2


def test_failed_upload_is_reported(published, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    api = RecordingApi(fail_commit=True)
    out = tmp_path / "out"
    code = main(
        [
            VARIANT,
            "--org",
            ORG,
            "--source-checkpoint",
            str(published.source),
            "--out",
            str(out),
            "--max-rel-error",
            "1e-4",
        ],
        api=api,
    )
    assert code == 1
    assert "FAILED upload" in caplog.text
    assert api.named("create_collection") == []


# ------------------------------------------------------------------------------------------ bad input
def test_unknown_variant_lists_the_valid_ones(tmp_path, capsys):
    assert main(["resnet50_fdconv.nope", "--org", ORG, "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    out = capsys.readouterr().err
    assert (
        "unknown variant 'resnet50_fdconv.nope'" in out
        and "resnet50_fdconv.tv_in1k" in out
        and "fdconv-resnet-50" in out
    )


def test_refuses_a_non_empty_out_folder(tmp_path, source_checkpoint, capsys):
    staged = tmp_path / "out" / VARIANT
    staged.mkdir(parents=True)
    (staged / "keep.txt").write_text("user data")
    assert (
        main(
            [
                VARIANT,
                "--org",
                ORG,
                "--source-checkpoint",
                str(source_checkpoint),
                "--out",
                str(tmp_path / "out"),
                "--dry-run",
            ]
        )
        == 2
    )
    assert "--overwrite" in capsys.readouterr().err
    assert (staged / "keep.txt").read_text() == "user data"


def test_checkpoint_of_another_architecture_fails_cleanly(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    wrong = tmp_path / "resnet34.safetensors"
    save_file(_source_state_dict("resnet34"), wrong)
    api = RecordingApi()
    assert (
        main([VARIANT, "--org", ORG, "--source-checkpoint", str(wrong), "--out", str(tmp_path / "out")], api=api) == 1
    )
    out = caplog.text
    assert "does not fit resnet18.tv_in1k" in out and "FAILED" in out
    assert api.calls == [] and not (tmp_path / "out" / VARIANT).exists()


def test_failed_verification_stages_and_uploads_nothing(tmp_path, source_checkpoint, caplog):
    api = RecordingApi()
    args = [
        VARIANT,
        "--org",
        ORG,
        "--source-checkpoint",
        str(source_checkpoint),
        "--out",
        str(tmp_path / "out"),
        "--max-rel-error",
        "1e-12",
    ]
    assert main(args, api=api) == 1
    assert "differs from its source" in caplog.text
    assert api.calls == []
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_legacy_checkpoints_load_with_weights_only(tmp_path):
    state = {"w": torch.randn(3)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ok.pth")
    assert torch.equal(load_source_state_dict(tmp_path / "ok.pth")["w"], state["w"])
    torch.save({"state_dict": state, "obj": SimpleNamespace(a=1)}, tmp_path / "pickle.pth")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_source_state_dict(tmp_path / "pickle.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source_state_dict(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------- transformers-format sources
def _native_segformer_folder(path: Path, task: str, **config_kwargs) -> Path:
    """A random native SegFormer checkpoint in the Hub's (<= 5.8) key layout, with its image processor."""
    from transformers import (
        SegformerConfig,
        SegformerForImageClassification,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    torch.manual_seed(0)
    config = SegformerConfig(**config_kwargs)
    cls = SegformerForSemanticSegmentation if task == "segmentation" else SegformerForImageClassification
    model = cls(config).eval()
    with torch.no_grad():  # non-trivial norms so every projection matters
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
    model.save_pretrained(path, save_original_format=True)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


def test_transformers_variant_stages_a_loadable_folder(tmp_path, hub_repo):
    from transformers import AutoModelForSemanticSegmentation, SegformerForSemanticSegmentation

    variant = "fdconv-segformer-b0-finetuned-ade-512-512"
    tiny = dict(
        hidden_sizes=[32, 48, 64, 96],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=64,
        num_labels=5,
        image_size=64,
    )
    source = _native_segformer_folder(tmp_path / "src", "segmentation", **tiny)
    api = RecordingApi()
    assert (
        main(
            [variant, "--org", ORG, "--source-checkpoint", str(source), "--out", str(tmp_path / "out"), "--dry-run"],
            api=api,
        )
        == 0
    )
    assert api.calls == []  # dry run: no Hub call at all
    folder = tmp_path / "out" / variant
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    repo_id = f"{ORG}/{variant}"
    hub_repo(repo_id, {p.name: p for p in folder.iterdir()})
    native = SegformerForSemanticSegmentation.from_pretrained(source).eval()
    model = AutoModelForSemanticSegmentation.from_pretrained(repo_id).eval()
    assert type(model).__name__ == "FDConvSegformerForSemanticSegmentation"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(model(pixel_values=x).logits, native(pixel_values=x).logits) <= 1e-4
    data = ModelCard.load(folder / "README.md").data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "image-segmentation"
    assert (
        data["license"] == "other"
        and data["license_name"] == "nvidia-segformer"
        and data["datasets"] == ["scene_parse_150"]
    )
    assert data["base_model"] == "nvidia/segformer-b0-finetuned-ade-512-512"


def test_timm_mit_variant_converts_a_transformers_checkpoint(tmp_path, hub_repo):
    """mit_b0_fdconv.in1k's source is nvidia/mit-b0, a transformers checkpoint: verified against the native model."""
    mit_b0 = dict(
        hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8], num_labels=1000
    )
    source = _native_segformer_folder(tmp_path / "mit-b0", "classification", **mit_b0)
    assert (
        main(
            [
                "mit_b0_fdconv.in1k",
                "--org",
                ORG,
                "--source-checkpoint",
                str(source),
                "--out",
                str(tmp_path / "out"),
                "--dry-run",
            ]
        )
        == 0
    )
    folder = tmp_path / "out" / "mit_b0_fdconv.in1k"
    hub_repo(f"{ORG}/mit_b0_fdconv.in1k", {p.name: p for p in folder.iterdir()})
    from transformers import SegformerForImageClassification

    native = SegformerForImageClassification.from_pretrained(source).eval()
    model = timm.create_model(f"hf-hub:{ORG}/mit_b0_fdconv.in1k", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(model(x), native(pixel_values=x).logits) <= 1e-4
    assert ModelCard.load(folder / "README.md").data.to_dict()["license_name"] == "nvidia-segformer"
