"""Upload a staged folder as one atomic commit, skipping files whose content is already on the Hub."""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils.sha import git_hash, sha_fileobj

__all__ = ["UploadResult", "add_to_collection", "changed_files", "upload_folder_if_changed"]

_logger = logging.getLogger(__name__)

UploadResult = str  # 'uploaded <commit url>' or 'unchanged'


def _local_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_content(local: Path, remote) -> bool:
    """Compare with the Hub's hashes: sha256 for LFS files, the git blob id for the others."""
    if getattr(remote, "lfs", None):
        with local.open("rb") as f:
            return sha_fileobj(f).hex() == remote.lfs.sha256
    return git_hash(local.read_bytes()) == remote.blob_id


def changed_files(api: HfApi, repo_id: str, folder: Path, revision: str | None) -> list[str]:
    """Paths of ``folder`` that are missing on the Hub or differ from it."""
    local = _local_files(folder)
    try:
        remote = {r.path: r for r in api.get_paths_info(repo_id, list(local), revision=revision)}
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        remote = {}
    return [path for path, file in local.items() if path not in remote or not _same_content(file, remote[path])]


def upload_folder_if_changed(
    api: HfApi,
    repo_id: str,
    folder: Path,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str,
) -> UploadResult:
    """Create the repo if needed and commit the changed files in one commit (nothing if all are current).

    A commit is atomic: an interrupted upload leaves the repo as it was, and a re-run sends what is
    missing (large files already transferred are deduplicated by the Hub's LFS pre-upload check).
    """
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    changed = changed_files(api, repo_id, folder, revision)
    if not changed:
        _logger.info("%s is up to date", repo_id)
        return "unchanged"
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in changed]
    info = api.create_commit(repo_id, operations=operations, commit_message=commit_message, revision=revision)
    _logger.info("committed %d files to %s", len(operations), repo_id)
    return f"uploaded {info.commit_url}"


def add_to_collection(api: HfApi, org: str, title: str, repo_ids: list[str]) -> str:
    """Group the published repos in one collection of ``org``; returns its slug."""
    collection = api.create_collection(
        title,
        namespace=org,
        description="FDConv (CVPR 2025) models converted exactly from their sources by fdconv-zoo.",
        exists_ok=True,
    )
    for repo_id in repo_ids:
        api.add_collection_item(collection.slug, item_id=repo_id, item_type="model", exists_ok=True)
    return collection.slug
