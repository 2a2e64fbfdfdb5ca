"""Bytes of a file on the hub, read with HTTP range requests: what lets the planner read a
model's GGUF header (placement/gguf_file.py) before, or instead of, downloading it.

The requests go through huggingface_hub's own HTTP session, with the endpoint and token the
downloads use; a request asks for one range and the body is read no further than that range,
even from a server that ignores `Range` and sends the whole file.
"""

from __future__ import annotations

import threading

import httpx2
from huggingface_hub import get_session, hf_raise_for_status
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils._headers import build_hf_headers

from locallab_gguf.errors import HubError
from locallab_gguf.models.download import RemoteFile, hub_failure, remote_file
from locallab_gguf.models.hub_access import HubAccess
from locallab_gguf.models.registry import ModelSpec


class HubRangeSource:
    """One file of a hub repository, read piece by piece (a `ByteSource` of gguf_file)."""

    def __init__(self, spec: ModelSpec, remote: RemoteFile, access: HubAccess) -> None:
        if remote.size is None:
            raise HubError(
                f"the hub did not say how large {spec.repo}/{spec.file} is, so its header "
                "cannot be read before downloading it"
            )
        self.spec = spec
        self.remote = remote
        self.access = access
        self.bytes_read = 0
        self._size = remote.size
        self._lock = threading.Lock()

    @classmethod
    def open(cls, spec: ModelSpec, access: HubAccess) -> HubRangeSource:
        """Ask the hub for the file's size, etag and where it is served (one request)."""
        return cls(spec, remote_file(spec, access), access)

    @property
    def name(self) -> str:
        return f"{self.spec.repo}/{self.spec.file}"

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        headers = build_hf_headers(token=self.access.token)
        headers["Range"] = f"bytes={offset}-{offset + length - 1}"
        data = bytearray()
        try:
            with get_session().stream(
                "GET",
                self.remote.location,
                headers=headers,
                timeout=self.access.timeout_seconds,
                follow_redirects=True,
            ) as response:
                hf_raise_for_status(response)
                if response.status_code != 206 and offset:
                    raise HubError(
                        f"{self.access.endpoint} ignored a byte range asked for {self.name} "
                        f"(it answered {response.status_code}), so its header cannot be read "
                        "without downloading it; check HF_ENDPOINT and any proxy between."
                    )
                self._check_total(response.headers.get("Content-Range"))
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) >= length:
                        break
        except (httpx2.TransportError, OSError, HfHubHTTPError) as exc:
            raise hub_failure(exc, self.spec, self.access, during_transfer=False) from exc
        with self._lock:
            self.bytes_read += min(len(data), length)
        return bytes(data[:length])

    def _check_total(self, content_range: str | None) -> None:
        """A range's answer names the file's size: the tensors' sizes depend on it, so it must
        be the size the file's metadata gave."""
        total = (content_range or "").rpartition("/")[2]
        if total.isdigit() and int(total) != self._size:
            raise HubError(
                f"{self.access.endpoint} gave {self.name} two sizes ({self._size:,} and "
                f"{int(total):,} bytes); its header cannot be read before downloading it"
            )
