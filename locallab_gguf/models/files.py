"""Resolve a ModelSpec to a verified GGUF file on this machine, downloading it if need be.

Sources, in order: a Python package that ships the file (no network ever), the Hugging Face
cache, then the hub itself (`download`). Every file is checked against its sha256
before it is used: the registry's when it gives one, else the hub's (a large file's blob in
the cache is named by its sha256). A cached file that fails the check is removed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import msgspec

from locallab_gguf.errors import (
    ChecksumMismatch,
    ModelFilePackaged,
    ModelNotCached,
    ModelUnavailable,
)
from locallab_gguf.models.budget import CacheBudget
from locallab_gguf.models.hub_access import HubAccess, hub_access
from locallab_gguf.models.hub_names import RepoFile
from locallab_gguf.models.ids import HubFile, HubRef
from locallab_gguf.models.progress import ProgressCallback
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.models.splits import split_parts
from locallab_gguf.settings import Settings

log = logging.getLogger(__name__)

_HASH_CHUNK = 8 * 1024 * 1024
# A repository's file list is asked for again after this long: a new quantization pushed to
# it is seen without a restart, and ids resolve without a request each time.
_LISTING_SECONDS = 300.0
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _ignore_progress(done: int, total: int | None) -> None:
    pass


class ModelFiles:
    """Finds and fetches model files; remembers which files it has verified (by size, mtime)."""

    def __init__(
        self,
        cache_dir: str | None = None,
        *,
        access: HubAccess | None = None,
        budget: CacheBudget | None = None,
    ) -> None:
        """`budget` bounds what `fetch` downloads into the cache (--max-cache-bytes)."""
        self.cache_dir = cache_dir
        self.access = access or HubAccess()
        self.budget = budget
        self._verified: dict[tuple[str, int, int], str] = {}
        self._listings: dict[tuple[str, str], tuple[float, list[RepoFile]]] = {}
        self._lock = threading.Lock()

    def pick_hub_file(self, ref: HubRef) -> HubFile:
        """The file `owner/repo:QUANT` or `owner/repo` means (hub_names.py), from the
        repository's file list: the hub's, or offline, the cache's. Blocking the first time
        (HTTP), then kept a while."""
        return self._picked(ref, cached_only=False)

    def pick_cached_hub_file(self, ref: HubRef) -> HubFile:
        """As `pick_hub_file`, among the files of the repository this machine has: for the
        commands that never reach the network (`show`, `rm`)."""
        return self._picked(ref, cached_only=True)

    def _picked(self, ref: HubRef, *, cached_only: bool) -> HubFile:
        from locallab_gguf.models.hub_names import pick_file

        hub_file, why = pick_file(ref, self._repo_files(ref, cached_only=cached_only))
        log.info("%s means %s: %s", ref.model_id, hub_file.model_id, why)
        return hub_file

    def _repo_files(self, ref: HubRef, *, cached_only: bool) -> list[RepoFile]:
        now = time.monotonic()
        key = (ref.repo, ref.revision)
        with self._lock:
            known = self._listings.get(key)
        if known is not None and now - known[0] < _LISTING_SECONDS:
            return known[1]
        # Imported here: huggingface_hub is slow to import, and local files never need it.
        from locallab_gguf.models.repo_listing import cached_repo_files, hub_repo_files

        if self.access.offline or cached_only:
            return cached_repo_files(ref, self.cache_dir)  # the cache changes as pulls run
        listed = hub_repo_files(ref, self.access)
        with self._lock:
            self._listings[key] = (now, listed)
        return listed

    def local_path(self, spec: ModelSpec) -> Path | None:
        """Where the file already is, without touching the network; None if nowhere."""
        packaged = packaged_path(spec)
        if packaged is not None:
            return packaged
        return self._cached_path(spec)

    def resolve(self, spec: ModelSpec) -> Path:
        """The verified local file; never downloads."""
        path = self.local_path(spec)
        if path is None:
            raise ModelUnavailable(
                f"{spec.repo}/{self._missing(spec)} (model {spec.id!r}) is not on this "
                f"machine; download it with `locallab-gguf pull {spec.id}`"
            )
        return self._verified_file(spec, path)

    def _missing(self, spec: ModelSpec) -> str:
        """What of `spec` is not here: its file, or the parts of a split model that are not."""
        cached = self._cached_parts(spec)
        absent = [part.file for part, path in cached if path is None]
        if len(cached) == 1 or len(absent) == len(cached):
            return spec.file
        return f"{', '.join(absent)} ({len(absent)} of the {len(cached)} parts of {spec.file})"

    def fetch(self, spec: ModelSpec, on_progress: ProgressCallback | None = None) -> Path:
        """The verified local file, downloaded first when it is not here.

        Blocking: run it in a thread. `on_progress` hears the bytes as they arrive; an
        exception it raises stops the download.
        """
        path = self.local_path(spec)
        if path is None:
            # Imported here: huggingface_hub is slow to import, and local files never need it.
            from locallab_gguf.models.download import download

            path = download(
                spec, self.access, self.cache_dir, on_progress or _ignore_progress, self.budget
            )
        return self._verified_file(spec, path)

    def remove_cached(self, spec: ModelSpec) -> bool:
        """Delete the model's copy in the cache; False when there is none. A model that ships
        inside a Python package is not the cache's to delete: ModelFilePackaged says so."""
        if packaged_path(spec) is not None:
            raise ModelFilePackaged(
                f"model {spec.id!r} ships inside the Python package {spec.package!r}; "
                f"uninstall that package to remove it"
            )
        paths = [path for _, path in self._cached_parts(spec) if path is not None]
        from locallab_gguf.models.download import remove_cached

        for path in paths:  # every part of a split model, even when some are missing
            remove_cached(path)
        return bool(paths)

    def is_packaged(self, spec: ModelSpec, path: Path) -> bool:
        return path == packaged_path(spec)

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._verified.get(key)
        if known is not None:
            return known
        digest = file_sha256(path)
        with self._lock:
            self._verified[key] = digest
        return digest

    def expected_sha256(self, spec: ModelSpec, path: Path) -> tuple[str, str] | None:
        """The sha256 `path` must have, and who says so; None when nobody does."""
        if spec.sha256 is not None:
            return spec.sha256, "the registry"
        from_hub = None if self.is_packaged(spec, path) else hub_sha256(path)
        return (from_hub, "the hub") if from_hub is not None else None

    def _verified_file(self, spec: ModelSpec, path: Path) -> Path:
        """`path`, once it and each other part of a split model match their sha256."""
        if self.is_packaged(spec, path):
            return self._verified_part(spec, path)
        parts = self._cached_parts(spec)
        if len(parts) == 1:
            return self._verified_part(spec, path)
        for part, part_path in parts:
            if part_path is None:
                raise ModelNotCached(
                    f"{part.file}, part of {spec.repo}/{spec.file}, is not on this machine; "
                    f"run `locallab-gguf pull {spec.id}` to fetch it"
                )
            self._verified_part(part if part_path != path else spec, part_path)
        return path

    def _verified_part(self, spec: ModelSpec, path: Path) -> Path:
        expectation = self.expected_sha256(spec, path)
        if expectation is None:
            return path
        expected, expected_by = expectation
        packaged = self.is_packaged(spec, path)
        actual = self.sha256(path)
        if actual != expected:
            if not packaged:
                from locallab_gguf.models.download import remove_cached

                remove_cached(path)
            log.error("%s has sha256 %s; %s expects %s", path, actual, expected_by, expected)
            raise ChecksumMismatch(
                spec.file, expected, actual, expected_by=expected_by, removed=not packaged
            )
        return path

    def _cached_path(self, spec: ModelSpec) -> Path | None:
        """The cached file; for a split model, its first part, once every part is here."""
        parts = self._cached_parts(spec)
        if any(path is None for _, path in parts):
            return None
        return parts[0][1]

    def _cached_parts(self, spec: ModelSpec) -> list[tuple[ModelSpec, Path | None]]:
        """Each part of the model (one for a file in one piece), with its path in the cache."""
        # Imported here: huggingface_hub is slow to import, and packaged files never need it.
        from huggingface_hub import try_to_load_from_cache

        found = []
        for file in split_parts(spec.file):
            part = msgspec.structs.replace(spec, file=file, sha256=None)
            path = try_to_load_from_cache(
                spec.repo, file, cache_dir=self.cache_dir, revision=spec.revision
            )
            found.append((part, Path(path) if isinstance(path, str) else None))
        return found


def hub_sha256(cached: Path) -> str | None:
    """The sha256 the hub gave for a cached file: large (LFS) files' blobs are named by it."""
    blob = cached.resolve().name
    return blob if _SHA256.fullmatch(blob) else None


def packaged_path(spec: ModelSpec) -> Path | None:
    if spec.package is None:
        return None
    # find_spec locates the package without importing (running) it.
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    for directory in found.submodule_search_locations:
        candidate = Path(directory) / spec.file
        if candidate.is_file():
            return candidate
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(settings: Settings, env: Mapping[str, str], *, serving: bool = False) -> ModelFiles:
    """The model files of this process: --cache-dir, reaching the hub as settings and the
    Hugging Face variables in `env` say (read once, here). A server (`serving`) downloads
    within --max-cache-bytes; the operator's own `pull` is not bounded by it."""
    budget = (
        CacheBudget(settings.max_cache_bytes)
        if serving and settings.max_cache_bytes is not None
        else None
    )
    return ModelFiles(settings.cache_dir, access=hub_access(settings, env), budget=budget)
