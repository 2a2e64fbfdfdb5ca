"""A hub repository's files with their sizes: from the hub, or, offline, from what the cache
holds of it (the files of its snapshot at that revision)."""

from __future__ import annotations

import httpx2
from huggingface_hub import HfApi
from huggingface_hub import RepoFile as HubEntry
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.file_download import repo_folder_name

from locallab_gguf.errors import ModelNotCached
from locallab_gguf.models.download import cache_root, hub_failure
from locallab_gguf.models.hub_access import HubAccess
from locallab_gguf.models.hub_names import RepoFile
from locallab_gguf.models.ids import HubFile, HubRef, hub_spec
from locallab_gguf.models.registry import ModelSpec

_WHAT = "its file list"


def hub_repo_files(ref: HubRef, access: HubAccess) -> list[RepoFile]:
    api = HfApi(endpoint=access.endpoint, token=access.token)
    try:
        entries = list(api.list_repo_tree(ref.repo, revision=ref.revision, recursive=True))
    except (httpx2.TransportError, OSError, HfHubHTTPError) as exc:
        raise hub_failure(exc, _as_spec(ref), access, during_transfer=False) from exc
    return [
        RepoFile(path=entry.path, size=entry.lfs.size if entry.lfs else entry.size)
        for entry in entries
        if isinstance(entry, HubEntry)  # not a folder
    ]


def cached_repo_files(ref: HubRef, cache_dir: str | None) -> list[RepoFile]:
    """The repository's files this machine has, at `ref`'s revision; ModelNotCached if none."""
    repo_dir = cache_root(cache_dir) / repo_folder_name(repo_id=ref.repo, repo_type="model")
    ref_file = repo_dir / "refs" / ref.revision
    commit = ref_file.read_text().strip() if ref_file.is_file() else ref.revision
    snapshot = repo_dir / "snapshots" / commit
    files = [
        RepoFile(path=path.relative_to(snapshot).as_posix(), size=path.stat().st_size)
        for path in sorted(snapshot.rglob("*"))
        if path.is_file()
    ]
    if not files:
        raise ModelNotCached(
            f"nothing of {ref.repo} at revision {ref.revision!r} is on this machine, and "
            "offline mode is on (--offline or HF_HUB_OFFLINE=1), so its files cannot be listed. "
            f"Pull it while online: `locallab-gguf pull {ref.model_id}`."
        )
    return files


def _as_spec(ref: HubRef) -> ModelSpec:
    # The hub's errors are named for a file: here, the list of them.
    return hub_spec(HubFile(repo=ref.repo, file=_WHAT, revision=ref.revision))
