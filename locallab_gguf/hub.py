"""Resolve a ModelSpec to a verified GGUF file on this machine.

Sources, in order: a Python package that ships the file (no network ever), then the
Hugging Face cache. A file with a registry sha256 is checked before it is used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path

from locallab_gguf.errors import ChecksumMismatch, ModelUnavailable
from locallab_gguf.registry import ModelSpec

_HASH_CHUNK = 8 * 1024 * 1024


class ModelFiles:
    """Finds model files; remembers which files it has verified (by size and mtime)."""

    def __init__(self, cache_dir: str | None = None) -> None:
        self.cache_dir = cache_dir
        self._verified: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def local_path(self, spec: ModelSpec) -> Path | None:
        """Where the file already is, without touching the network; None if nowhere."""
        packaged = packaged_path(spec)
        if packaged is not None:
            return packaged
        return self._cached_path(spec)

    def resolve(self, spec: ModelSpec) -> Path:
        path = self.local_path(spec)
        if path is None:
            raise ModelUnavailable(
                f"{spec.repo}/{spec.file} (model {spec.id!r}) is not on this machine; "
                f"download it with `locallab-gguf pull {spec.id}`"
            )
        if spec.sha256 is not None:
            self.verify(path, spec.sha256)
        return path

    def verify(self, path: Path, expected: str) -> None:
        actual = self.sha256(path)
        if actual != expected:
            raise ChecksumMismatch(str(path), expected, actual)

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

    def _cached_path(self, spec: ModelSpec) -> Path | None:
        # Imported here: huggingface_hub reads its environment at import time, and the
        # packaged default model never needs it.
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            spec.repo, spec.file, cache_dir=self.cache_dir, revision=spec.revision
        )
        return Path(found) if isinstance(found, str) else None


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
