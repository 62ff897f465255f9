"""Test-wide set-up: an isolated, offline Hugging Face cache that tests fill by hand.

HF_HUB_OFFLINE and the cache location are read when huggingface_hub is imported, so they are set here,
before any test module imports it. Tests never touch the network: a pretrained load finds its files in
the hand-built cache (``models--ORG--NAME/refs/main`` + ``snapshots/<sha>/...``), exactly where
huggingface_hub would have downloaded them.
"""

import atexit
import os
import shutil
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="fdconv-zoo-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# `make test` runs one pytest worker per core: one intra-op thread each, not two workers fighting over both cores.
torch.set_num_threads(1)

from hub_cache import write_hub_repo  # noqa: E402


@pytest.fixture
def hub_repo():
    """``hub_repo(repo_id, {filename: bytes | str | Path})`` writes a repo into the offline cache."""
    return write_hub_repo
