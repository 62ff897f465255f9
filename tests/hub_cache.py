"""Write files into the Hugging Face cache layout by hand (no public helper exists)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def write_hub_repo(repo_id: str, files: dict[str, bytes | str | os.PathLike], repo_type: str = "model") -> Path:
    """Create ``<HF_HUB_CACHE>/<type>s--ORG--NAME`` with ``refs/main`` and a snapshot holding ``files``.

    Values are file contents (bytes or str) or paths of files to copy. Returns the snapshot folder.
    Re-writing the same repo replaces its snapshot.
    """
    cache = Path(os.environ["HF_HUB_CACHE"])
    repo_dir = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    sha = hashlib.sha1(repr(sorted(files)).encode() + str(len(list(repo_dir.glob("snapshots/*")))).encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif isinstance(content, str):
            target.write_text(content)
        else:
            shutil.copyfile(content, target)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(sha)
    return snapshot
