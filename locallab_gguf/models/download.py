"""Download one GGUF file from the Hugging Face hub into its cache, or say exactly why not.

The file's metadata is asked for first, once and without retries, so that a missing repo,
revision or file, a refused token or an unreachable hub is known in one round trip instead
of after hf_hub_download's retries; the size it gives is checked against the free disk
before a byte is written. hf_hub_download then does the transfer: into a temporary file
that is renamed into the cache only when complete, under a lock that makes a second
process wait for the first and then reuse its file.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import filelock
import httpx2
import msgspec
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name

from locallab_gguf.errors import (
    DownloadInterrupted,
    HubAccessDenied,
    HubError,
    HubFileNotFound,
    HubUnreachable,
    LocalLabError,
    ModelNotCached,
    NotEnoughDisk,
    RepoNotFound,
    RevisionNotFound,
)
from locallab_gguf.models.budget import CacheBudget
from locallab_gguf.models.hub_access import HubAccess
from locallab_gguf.models.progress import ProgressCallback, reporter_class
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.models.splits import split_parts

log = logging.getLogger(__name__)


class RemoteFile(msgspec.Struct, frozen=True):
    etag: str
    size: int | None
    location: str = ""  # where its bytes are served (the hub may redirect to a CDN)
    commit: str = ""


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else Path(constants.HF_HUB_CACHE)


def download(
    spec: ModelSpec,
    access: HubAccess,
    cache_dir: str | None,
    on_progress: ProgressCallback,
    budget: CacheBudget | None = None,
) -> Path:
    """Download `spec`'s file into the cache (or find it there) and return its path; within
    `budget` (--max-cache-bytes) when one is given.

    A split model's parts are downloaded one after another into the same snapshot, with one
    progress over all of them; every part is asked for first, so a missing one is named before
    any is downloaded, and parts already here are not downloaded again. The first part's path
    is returned: llama.cpp finds the others beside it.
    """
    if access.offline:
        raise not_cached(spec)
    parts = [msgspec.structs.replace(spec, file=part) for part in split_parts(spec.file)]
    remotes = [remote_file(part, access) for part in parts]
    if len(parts) == 1:
        return _download_file(spec, remotes[0], access, cache_dir, on_progress, budget)
    sizes = [remote.size or 0 for remote in remotes]
    total = sum(sizes) if all(remote.size is not None for remote in remotes) else None
    root = cache_root(cache_dir)
    repo_dir = root / repo_folder_name(repo_id=spec.repo, repo_type="model")
    missing = sum(
        size
        for size, remote in zip(sizes, remotes, strict=True)
        if not (repo_dir / "blobs" / remote.etag).exists()
    )
    require_free_space(f"{spec.repo}/{spec.file} and its other parts", root, missing)
    done = 0
    paths = []
    for part, remote, size in zip(parts, remotes, sizes, strict=True):
        paths.append(
            _download_file(
                part, remote, access, cache_dir, _shifted(on_progress, done, total), budget
            )
        )
        done += size
    return paths[0]


def _shifted(on_progress: ProgressCallback, before: int, total: int | None) -> ProgressCallback:
    """A part's progress as progress over the whole model."""

    def report(done: int, _: int | None) -> None:
        on_progress(before + done, total)

    return report


def _download_file(
    spec: ModelSpec,
    remote: RemoteFile,
    access: HubAccess,
    cache_dir: str | None,
    on_progress: ProgressCallback,
    budget: CacheBudget | None,
) -> Path:
    where = f"{spec.repo}/{spec.file}"
    on_progress(0, remote.size)
    root = cache_root(cache_dir)
    repo_dir = root / repo_folder_name(repo_id=spec.repo, repo_type="model")
    admitted: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if not (repo_dir / "blobs" / remote.etag).exists():
        remove_stale_partials(root, repo_dir, remote.etag)
        if remote.size is not None:
            require_free_space(where, root, remote.size)
        if budget is not None:
            if remote.size is None:
                raise HubError(
                    f"the hub did not say how large {where} is, so it cannot be checked "
                    "against --max-cache-bytes; nothing was downloaded."
                )
            admitted = budget.admit(where, root, remote.etag, remote.size)
    with admitted:
        return _transfer(spec, access, root, on_progress)


def _transfer(
    spec: ModelSpec, access: HubAccess, root: Path, on_progress: ProgressCallback
) -> Path:
    try:
        found = hf_hub_download(
            spec.repo,
            spec.file,
            revision=spec.revision,
            cache_dir=str(root),
            token=access.token,
            endpoint=access.endpoint,
            etag_timeout=access.timeout_seconds,
            tqdm_class=reporter_class(on_progress),
        )
    except (httpx2.TransportError, OSError, HfHubHTTPError) as exc:
        raise hub_failure(exc, spec, access, during_transfer=True) from exc
    return Path(found)


def remote_file(spec: ModelSpec, access: HubAccess) -> RemoteFile:
    """The file's etag and size, from one request: fast failures, named precisely."""
    url = hf_hub_url(spec.repo, spec.file, revision=spec.revision, endpoint=access.endpoint)
    try:
        metadata = get_hf_file_metadata(
            url,
            token=access.token,
            timeout=access.timeout_seconds,
            endpoint=access.endpoint,
            retry_on_errors=False,
        )
    except (httpx2.TransportError, OSError, HfHubHTTPError) as exc:
        raise hub_failure(exc, spec, access, during_transfer=False) from exc
    if metadata.etag is None or metadata.commit_hash is None:
        raise HubError(
            f"{access.endpoint} answered for {spec.repo}/{spec.file} without the headers of a "
            "Hugging Face hub (ETag, X-Repo-Commit); check HF_ENDPOINT and any proxy between."
        )
    return RemoteFile(
        etag=metadata.etag,
        size=metadata.size,
        location=metadata.location,
        commit=metadata.commit_hash,
    )


def require_free_space(what: str, root: Path, needed: int) -> None:
    directory = root
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    free = shutil.disk_usage(directory).free
    if free < needed:
        log.error("%s needs %d bytes; %s has %d free", what, needed, root, free)
        raise NotEnoughDisk(what, needed, free)


def remove_stale_partials(root: Path, repo_dir: Path, etag: str) -> None:
    """Delete what killed downloads of this blob left behind.

    hf_hub_download holds `<cache>/.locks/<repo>/<etag>.lock` while it downloads, so when
    that lock is free, no process is writing any `<etag>.*.incomplete` file.
    """
    partials = list((repo_dir / "blobs").glob(f"{etag}.*.incomplete"))
    if not partials:
        return
    lock = filelock.FileLock(root / ".locks" / repo_dir.name / f"{etag}.lock", timeout=0)
    try:
        with lock:
            for partial in partials:
                partial.unlink(missing_ok=True)
    except filelock.Timeout:
        return  # another process is downloading it now


def remove_cached(path: Path) -> None:
    """Remove a cached file: its snapshot entry and the blob it links to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)


def not_cached(spec: ModelSpec) -> ModelNotCached:
    return ModelNotCached(
        f"{spec.repo}/{spec.file} (model {spec.id!r}) is not on this machine, and offline mode "
        f"is on (--offline or HF_HUB_OFFLINE=1), so it cannot be downloaded. Pull it while "
        f"online: `locallab-gguf pull {spec.id}`."
    )


def hub_failure(
    exc: Exception, spec: ModelSpec, access: HubAccess, *, during_transfer: bool
) -> LocalLabError:
    """Our error for what huggingface_hub or the network raised."""
    where = f"{spec.repo}/{spec.file}"
    endpoint = access.endpoint
    token_hint = "give a token that has access (--token or HF_TOKEN)"
    if isinstance(exc, LocalEntryNotFoundError) and isinstance(exc.__cause__, Exception):
        exc = exc.__cause__  # the hub could not be asked; what stopped it is the cause
    if isinstance(exc, OfflineModeIsEnabled):
        return not_cached(spec)
    if isinstance(exc, GatedRepoError):
        given = "the token given has no access to it" if access.token else "no token was given"
        return HubAccessDenied(
            f"{spec.repo} is a gated repository and {given}; {spec.file} was not downloaded. "
            f"Accept its conditions at {endpoint}/{spec.repo} with your account, then "
            f"{token_hint}."
        )
    if isinstance(exc, RevisionNotFoundError):
        return RevisionNotFound(
            f"{spec.repo} has no revision {spec.revision!r}, so {spec.file} cannot be "
            "downloaded; name an existing branch, tag or commit."
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubFileNotFound(
            f"{spec.repo} has no file {spec.file!r} at revision {spec.revision!r}; check the "
            f"name against the repository's files at {endpoint}/{spec.repo}/tree/{spec.revision}."
        )
    if isinstance(exc, RepositoryNotFoundError):
        private = "" if access.token else f"; if it is private or gated, {token_hint}"
        return RepoNotFound(
            f"the hub at {endpoint} has no repository {spec.repo!r} (looking for {spec.file}). "
            f"Check the id{private}."
        )
    if isinstance(exc, HfHubHTTPError) and exc.response.status_code in (401, 403):
        return HubAccessDenied(
            f"the hub refused access to {where} ({exc.response.status_code}): the token is "
            f"invalid, expired or lacks access; {token_hint}."
        )
    if isinstance(exc, HfHubHTTPError):
        return HubError(
            f"the hub at {endpoint} answered {exc.response.status_code} for {where}; retry later."
        )
    if isinstance(exc, FileMetadataError):
        return HubError(
            f"{endpoint} did not answer for {where} as a Hugging Face hub does ({exc}); check "
            "HF_ENDPOINT and any proxy between."
        )
    reason = _reason(exc)
    if during_transfer:
        return DownloadInterrupted(
            f"the download of {where} broke off ({reason}); nothing partial was kept. Run "
            f"`locallab-gguf pull {spec.id}` again to fetch it."
        )
    return HubUnreachable(
        f"cannot reach the Hugging Face hub at {endpoint} to fetch {where} ({reason}). Check "
        "the network or HF_ENDPOINT; models already cached still load (--offline)."
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
