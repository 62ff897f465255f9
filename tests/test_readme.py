"""The README's promises, checked.

Every fenced code block either runs here (Python blocks offline, with small stand-ins in the hand-built Hub cache
where a block names a Hub checkpoint; command-line blocks in-process, on a tiny image folder) or is marked in the
README, on the line before it, with ``<!-- readme-test: KIND ... -->`` for what a test cannot have (the network) or
what CI runs itself. The numbers the README quotes are checked against where they come from: the benchmark data
files and the models' parameter counts.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import fdconv_zoo
from fdconv_zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 250
MARKER = re.compile(r"^<!-- readme-test: (\w+)[^>]*-->$")
# What a marked block needs or who runs it instead of this file.
MARKED_KINDS = {"network", "ci"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
# Command-line blocks run on a tiny image folder, with a narrow ResNet-50 standing in for timm's checkpoint and
# these options appended (argparse keeps an option's last value).
NARROW_RESNET = dict(layers=(1, 1, 1, 1), channels=(32, 64, 96, 128))
FAST_CLI_OPTIONS = ["--epochs", "1", "--batch-size", "4", "--image-size", "32"]
FAST_CLI_OPTIONS += [f"--model-arg={key}={value}" for key, value in NARROW_RESNET.items()]


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    marker: str | None  # the KIND of a `<!-- readme-test: KIND -->` line right before the fence
    line: int

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.language}"


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.match(before.strip())
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(match.group(1), match.group(2), marker.group(1) if marker else None, line))
    return blocks


BLOCKS = readme_blocks()
PYTHON_BLOCKS = [b for b in BLOCKS if b.language == "python" and b.marker is None]
CLI_BLOCKS = [b for b in BLOCKS if b.language == "bash" and b.marker is None]


def test_readme_is_short_and_every_block_is_run_or_marked():
    assert len(README.read_text().splitlines()) <= MAX_LINES
    assert PYTHON_BLOCKS and CLI_BLOCKS
    for block in BLOCKS:
        if block.marker is not None:
            assert block.marker in MARKED_KINDS, f"README line {block.line}: unknown marker {block.marker!r}"
        else:
            assert block.language in {"python", "bash", "bibtex"}, f"README line {block.line}: unmarked {block!r}"


def test_readme_has_no_commit_hashes_and_its_links_exist():
    text = README.read_text()
    hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"\d", w) and re.search(r"[a-f]", w)]
    assert not hashes
    for target in re.findall(r"\]\((?!https?://)([^)#]+)", text):
        assert (ROOT / target).exists(), target


# ------------------------------------------------------------------------------------------------ stand-ins
def _write_timm_weights(hub_repo, architecture: str, tag: str, **model_args) -> dict[str, torch.Tensor]:
    """timm's ``timm/<architecture>.<tag>`` repo in the offline cache: the base model's random weights."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model(architecture, **model_args).state_dict().items()}
    for key, value in state.items():  # running statistics away from (0, 1), so a wrong conversion shows
        if key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith("running_mean"):
            value.normal_(0, 0.1)
    folder = hub_repo(f"timm/{architecture}.{tag}", {"config.json": json.dumps({"architecture": architecture})})
    save_file(state, folder / "model.safetensors")
    return state


def _write_small_transformers_resnet(hub_repo, repo_id: str) -> None:
    """A small ResNet under ``repo_id``: the block only needs a checkpoint of that model type and its processor."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 96, 128], depths=[1, 1, 1, 1], num_labels=10)
    folder = hub_repo(repo_id, {"README.md": "stand-in"})
    ResNetForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folder)


@pytest.fixture
def readme_offline(hub_repo, tmp_path, monkeypatch):
    """The Hub checkpoints the README names, as stand-ins in the offline cache; the blocks run in tmp_path."""
    weights = _write_timm_weights(hub_repo, "resnet50", "tv_in1k")
    _write_small_transformers_resnet(hub_repo, "microsoft/resnet-50")
    monkeypatch.chdir(tmp_path)
    return weights


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_python_block_runs(block, readme_offline):
    namespace: dict = {}
    exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)
    if "resnet50_fdconv.tv_in1k" in block.code:  # "converted" means the source model's function
        source = timm.create_model("resnet50").eval()
        source.load_state_dict(readme_offline)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            expected = source(x)
            assert (namespace["model"](x) - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("block", CLI_BLOCKS, ids=[b.id for b in CLI_BLOCKS])
def test_command_line_block_runs(block, readme_offline, hub_repo, tmp_path):
    _write_timm_weights(hub_repo, "resnet50", "tv_in1k", **NARROW_RESNET)
    images = tmp_path / "path" / "to" / "images"
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (images / label).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / label / f"{i}.png")
    commands = [line for line in block.code.splitlines() if line.strip() and not line.startswith("#")]
    for command in commands:
        program, *args = shlex.split(command, comments=True)
        assert program == "fdconv-zoo"
        assert main([*args, *FAST_CLI_OPTIONS]) == 0
        output = Path(args[args.index("--output-dir") + 1])
        model = timm.create_model(f"local-dir:{output / 'model'}", pretrained=True)
        assert sum(isinstance(m, fdconv_zoo.FDConv) for m in model.modules()) == 12  # 3 per bottleneck
        assert model.num_classes == 2


def test_the_two_commands_are_the_makefile_and_ci_ones():
    (block,) = [b for b in BLOCKS if b.marker == "ci"]
    commands = [line.split("#")[0].strip() for line in block.code.splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text().splitlines()


def test_citation_names_the_paper():
    (block,) = [b for b in BLOCKS if b.language == "bibtex"]
    assert block.code.count("{") == block.code.count("}")
    assert "Frequency Dynamic Convolution for Dense Image Prediction" in block.code and "2025" in block.code


# --------------------------------------------------------------------------------------------------- numbers
def _section_table(heading: str) -> list[list[str]]:
    section = README.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_performance_at_a_glance_is_the_intel_dense_table():
    data = json.loads((ROOT / "benchmarks" / "results" / "intel-xeon-avx512.json").read_text())["tables"]["dense"]
    source = {row[0]: dict(zip(data["columns"], row)) for row in data["rows"]}
    columns = ["eval ratio", "train ratio", "memory ratio", "official / FDConv eval"]
    rows = _section_table("Performance at a glance")
    assert len(rows) == 5
    for setting, *cells in rows:
        expected = [source[setting][c].split(" (")[0] for c in columns]
        assert cells == expected, setting


def _added_by_fdconv(model: torch.nn.Module) -> int:
    added = 0
    for module in model.modules():
        if isinstance(module, fdconv_zoo.FDConv) and module.use_fdconv:
            plain = module.out_channels * module.in_channels // module.groups * math.prod(module.kernel_size)
            added += (
                fdconv_zoo.count_parameters(module) - plain - (module.out_channels if module.bias is not None else 0)
            )
    return added


def test_model_table_parameter_counts():
    assert len(timm.list_pretrained("*_fdconv*")) == 85
    for row in _section_table("Models"):
        arch, added, base, total = re.fullmatch(r"(\w+): \+([\d.]+)M \(([\d.]+)M → ([\d.]+)M\)", row[-1]).groups()
        fdconv = timm.create_model(f"{arch}_fdconv", device="meta")
        n_fdconv = fdconv_zoo.count_parameters(fdconv)
        # the base model itself where timm has it; MiT (no timm base) from the layers FDConv replaced
        n_base = (
            fdconv_zoo.count_parameters(timm.create_model(arch, device="meta"))
            if timm.is_model(arch)
            else n_fdconv - _added_by_fdconv(fdconv)
        )
        assert (f"{n_base / 1e6:.2f}", f"{n_fdconv / 1e6:.2f}") == (base, total), arch
        assert f"{(n_fdconv - n_base) / 1e6:.2f}" == added, arch
