"""--max-cache-bytes: how much the server's downloads may hold in its model cache.

What the cache holds is counted from the cache itself (every GGUF file of a snapshot, each blob
once), so the budget survives restarts and counts models pulled earlier; downloads under way
count at their full size from the moment they are admitted, so two at once cannot each take
what is left.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from locallab_gguf.errors import DownloadBudgetExceeded


def cached_gguf_bytes(root: Path) -> int:
    """Bytes of the GGUF files in a Hugging Face cache: `models--*/snapshots/*/…/*.gguf`, each
    blob counted once however many snapshots link to it."""
    blobs: dict[Path, int] = {}
    for link in root.glob("models--*/snapshots/*/**/*"):
        if not link.name.lower().endswith(".gguf"):
            continue
        with contextlib.suppress(OSError):
            blob = link.resolve(strict=True)
            if blob.is_file():
                blobs[blob] = blob.stat().st_size
    return sum(blobs.values())


class CacheBudget:
    """Admits a download when it fits what the budget leaves; thread-safe (downloads run in
    threads)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        # Downloads admitted and not finished: blob etag -> (bytes, downloads waiting on it).
        self._admitted: dict[str, tuple[int, int]] = {}

    @contextlib.contextmanager
    def admit(self, what: str, root: Path, etag: str, size: int) -> Iterator[None]:
        """Hold `size` bytes of the budget while the block downloads `what` (blob `etag`), or
        raise DownloadBudgetExceeded before anything is written."""
        with self._lock:
            admitted = self._admitted.get(etag)
            if admitted is None:
                under_way = sum(size for size, _ in self._admitted.values())
                left = max(self.limit - cached_gguf_bytes(root) - under_way, 0)
                if size > left:
                    raise DownloadBudgetExceeded(what, size, left, self.limit)
                self._admitted[etag] = (size, 1)
            else:  # the same blob, already admitted: one transfer, counted once
                self._admitted[etag] = (admitted[0], admitted[1] + 1)
        try:
            yield
        finally:
            with self._lock:
                held, waiting = self._admitted[etag]
                if waiting > 1:
                    self._admitted[etag] = (held, waiting - 1)
                else:
                    del self._admitted[etag]
