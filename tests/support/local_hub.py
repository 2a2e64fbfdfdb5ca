"""A stand-in for the Hugging Face hub: real HTTP on a free loopback port, for real downloads.

It answers `HEAD` and `GET /{owner}/{name}/resolve/{revision}/{file}` as the hub answers for
a large (LFS) file: the commit, the file's sha256 as its ETag, its size, byte ranges (`a-` and
`a-b`), and `GET /api/models/{owner}/{name}/tree/{revision}` with the repository's files. It
answers the hub's errors with the hub's `X-Error-Code`s, records every request and counts the
bytes of file bodies it sends, and can be told to fail, to claim another size, to cut bodies
short, or to hold a body half-sent.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_CHUNK = 256 * 1024


class HubFile:
    def __init__(self, path: str, source: Path, etag: str | None) -> None:
        self.path = path
        self.source = source
        self.size = source.stat().st_size
        self.sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
        self.etag = etag or self.sha256


class HubRepo:
    def __init__(self, token: str | None) -> None:
        self.token = token  # a gated repo answers only requests bearing this token
        self.commits: dict[str, str] = {}  # revision -> commit
        self.files: dict[tuple[str, str], HubFile] = {}  # (commit, path) -> file


class LocalHub:
    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self.bytes_sent: dict[str, int] = {}  # file path -> bytes of its bodies sent
        self.range_reads = 0  # GETs of a closed byte range (a-b): header reads, not downloads
        self.status_for_all: int | None = None  # answer every request with this status
        self.claimed_size: int | None = None  # what HEAD says the size is
        self.cut_after: int | None = None  # a GET sends this many bytes, then hangs up
        self.cuts_left = 0
        self.hold_after: int | None = None  # a GET stops at this offset until `release`
        self.release = threading.Event()
        self.holding = threading.Event()  # set once a GET is held
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(
        self,
        repo: str,
        path: str,
        source: Path,
        *,
        revision: str = "main",
        commit: str | None = None,
        token: str | None = None,
        etag: str | None = None,
    ) -> HubFile:
        hub_repo = self.repos.setdefault(repo, HubRepo(token))
        commit = commit or hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        hub_repo.commits[revision] = commit
        hub_repo.commits[commit] = commit
        hub_file = HubFile(path, source, etag)
        hub_repo.files[(commit, path)] = hub_file
        return hub_file

    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for seen, _ in self.requests if method is None or seen == method)

    def downloads(self) -> int:
        """GETs of a file that were not header reads: whole files, or the rest of one."""
        with self._lock:
            gets = sum(1 for seen, path in self.requests if seen == "GET" and "/resolve/" in path)
            return gets - self.range_reads

    def sent(self, path: str, count: int) -> None:
        with self._lock:
            self.bytes_sent[path] = self.bytes_sent.get(path, 0) + count

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def take_cut(self) -> int | None:
        with self._lock:
            if self.cut_after is None or self.cuts_left <= 0:
                return None
            self.cuts_left -= 1
            return self.cut_after

    @contextmanager
    def running(self) -> Iterator[LocalHub]:
        thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="local-hub", daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            self.release.set()
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def hub(self) -> LocalHub:
        hub: LocalHub = self.server.hub  # type: ignore[attr-defined]
        return hub

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test output stays readable; `hub.requests` has what was asked

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        hub = self.hub
        path = urlsplit(self.path).path
        hub.record(self.command, path)
        if hub.status_for_all is not None:
            return self._error(hub.status_for_all, None, "the hub is down")
        if path.startswith("/api/models/"):
            return self._tree(path.removeprefix("/api/models/"))
        parts = path.lstrip("/").split("/", 4)
        if len(parts) != 5 or parts[2] != "resolve":
            return self._error(404, None, "not a resolve URL")
        found = self._commit(f"{parts[0]}/{parts[1]}", unquote(parts[3]))
        if found is None:
            return None
        repo, commit = found
        file_path = unquote(parts[4])
        hub_file = repo.files.get((commit, file_path))
        if hub_file is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit=commit)
        self._send_file(hub_file, commit, body)

    def _commit(self, repo_id: str, revision: str) -> tuple[HubRepo, str] | None:
        """The repository and the commit a revision names; None once the error is answered."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
            return None
        commit = repo.commits.get(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return None
        return repo, commit

    def _tree(self, rest: str) -> None:
        """The hub's file list: /api/models/{owner}/{name}/tree/{revision}, all in one page."""
        parts = rest.split("/", 3)
        if len(parts) != 4 or parts[2] != "tree":
            return self._error(404, None, "not a tree URL")
        found = self._commit(f"{parts[0]}/{parts[1]}", unquote(parts[3]))
        if found is None:
            return None
        repo, commit = found
        listing = [
            {
                "type": "file",
                "path": path,
                "size": 134,  # a large file's size in git is its LFS pointer's
                "oid": hashlib.sha1(path.encode()).hexdigest(),
                "lfs": {"oid": hub_file.sha256, "size": hub_file.size, "pointerSize": 134},
            }
            for (at, path), hub_file in sorted(repo.files.items())
            if at == commit
        ]
        return self._json(200, json.dumps(listing).encode(), {})

    def _send_file(self, hub_file: HubFile, commit: str, body: bool) -> None:
        hub = self.hub
        size = hub.claimed_size if hub.claimed_size is not None and not body else hub_file.size
        start, end = 0, size - 1
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged[len("bytes=") :].partition("-")
            start, end = int(first), min(int(last), size - 1) if last else size - 1
            if last and body:
                with hub._lock:
                    hub.range_reads += 1
        partial = (start, end) != (0, size - 1)
        self.send_response(206 if partial else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hub_file.etag}"')
        self.send_header("X-Linked-Etag", f'"{hub_file.etag}"')
        self.send_header("X-Linked-Size", str(size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end + 1 - start))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Connection", "close")
        self.end_headers()
        if not body:
            return
        cut = hub.take_cut()
        sent = 0
        try:
            with hub_file.source.open("rb") as source:
                source.seek(start)
                position = start
                while position <= end and (chunk := source.read(min(_CHUNK, end + 1 - position))):
                    hub.sent(hub_file.path, len(chunk))
                    if cut is not None and sent + len(chunk) > cut:
                        self.wfile.write(chunk[: cut - sent])
                        return  # hang up mid-body: the client sees a short read
                    if hub.hold_after is not None and position >= hub.hold_after:
                        hub.holding.set()
                        hub.release.wait(60)
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    position += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a killed pull); nothing to do
        finally:
            self.close_connection = True

    def _error(
        self, status: int, code: str | None, message: str, commit: str | None = None
    ) -> None:
        headers = {"X-Error-Message": message}
        if code is not None:
            headers["X-Error-Code"] = code
        if commit is not None:
            headers["X-Repo-Commit"] = commit
        self._json(status, f'{{"error": "{message}"}}'.encode(), headers)

    def _json(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.close_connection = True
