"""A hub model's GGUF header, read with range requests before anything is downloaded: the
header and tensor table of each part, never the weights.

Headers are kept per (repository, file, etag): the etag names the file's content, so asking
again costs one metadata request per part and no range reads.
"""

from __future__ import annotations

import logging
import threading

import msgspec

from locallab_gguf.models.hub_access import HubAccess
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.models.splits import split_parts
from locallab_gguf.placement.gguf_file import GgufHeader, read_gguf_header_from
from locallab_gguf.placement.gguf_parts import merge_parts

log = logging.getLogger(__name__)

_KEPT_HEADERS = 64


class HubHeaders:
    """Reads and keeps the headers of files on the hub."""

    def __init__(self) -> None:
        self._headers: dict[tuple[str, str, str], GgufHeader] = {}
        self._lock = threading.Lock()
        self.bytes_read = 0  # over the network, for all reads: what the header reads cost

    def read(self, spec: ModelSpec, access: HubAccess) -> GgufHeader:
        """The header of `spec`'s model on the hub, every part of a split model included.

        Blocking (HTTP): run it in a thread.
        """
        # Imported here: huggingface_hub is slow to import, and local files never need it.
        from locallab_gguf.models.hub_range import HubRangeSource

        headers = []
        for part in split_parts(spec.file):
            source = HubRangeSource.open(msgspec.structs.replace(spec, file=part), access)
            key = (spec.repo, part, source.remote.etag)
            with self._lock:
                known = self._headers.get(key)
            if known is None:
                known = read_gguf_header_from(source)
                log.info(
                    "read the header of %s/%s from the hub: %d of its %d bytes",
                    spec.repo,
                    part,
                    source.bytes_read,
                    source.size,
                )
                with self._lock:
                    self.bytes_read += source.bytes_read
                    if len(self._headers) >= _KEPT_HEADERS:
                        self._headers.pop(next(iter(self._headers)))
                    self._headers[key] = known
            headers.append(known)
        return merge_parts(headers)
