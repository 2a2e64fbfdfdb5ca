"""A hub repository's files with their sizes: from the hub, or, offline, from what the cache
holds of it (the files of its snapshot at that revision)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx2
from huggingface_hub import get_session, hf_raise_for_status
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils._headers import build_hf_headers

from locallab_gguf.errors import ModelNotCached
from locallab_gguf.models.download import cache_root, hub_failure
from locallab_gguf.models.hub_access import HubAccess
from locallab_gguf.models.hub_names import RepoFile
from locallab_gguf.models.ids import HubFile, HubRef, hub_spec
from locallab_gguf.models.registry import ModelSpec

_WHAT = "its file list"


def hub_repo_files(ref: HubRef, access: HubAccess) -> list[RepoFile]:
    """The repository's files at `ref`'s revision, page by page, each page asked once, without
    retries: a missing repository or an unreachable hub is known at once, as for a download."""
    url: str | None = f"{access.endpoint}/api/models/{ref.repo}/tree/{quote(ref.revision, safe='')}"
    params: dict[str, str] | None = {"recursive": "true", "expand": "false"}
    headers = build_hf_headers(token=access.token)
    entries: list[dict[str, Any]] = []
    try:
        while url is not None:
            response = get_session().get(
                url, params=params, headers=headers, timeout=access.timeout_seconds
            )
            hf_raise_for_status(response)
            entries += response.json()
            url, params = response.links.get("next", {}).get("url"), None  # holds the query
    except (httpx2.TransportError, OSError, HfHubHTTPError) as exc:
        raise hub_failure(exc, _as_spec(ref), access, during_transfer=False) from exc
    return [
        RepoFile(path=entry["path"], size=(entry.get("lfs") or entry)["size"])
        for entry in entries
        if entry.get("type") == "file"
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
