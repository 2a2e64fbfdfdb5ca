"""ModelFiles against a real local hub: download, verify, cache, offline, and every failure."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from locallab_gguf.errors import (
    ChecksumMismatch,
    DownloadInterrupted,
    HubAccessDenied,
    HubError,
    HubFileNotFound,
    HubUnreachable,
    LoadCancelled,
    LocalLabError,
    ModelNotCached,
    NotEnoughDisk,
    RepoNotFound,
    RevisionNotFound,
)
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.hub_access import HubAccess, hub_access
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.settings import Settings
from tests.support.local_hub import LocalHub
from tests.support.servers import free_port

REPO = "test-owner/tiny-GGUF"
FILE = "tiny.gguf"
WRONG_SHA = "0" * 64


def tiny_spec(**fields: object) -> ModelSpec:
    values: dict[str, object] = {"id": "tiny", "name": "Tiny", "repo": REPO, "file": FILE}
    return ModelSpec(**{**values, **fields})  # type: ignore[arg-type]


def hub_files(hub: LocalHub, cache: Path, **access: object) -> ModelFiles:
    return ModelFiles(str(cache), access=HubAccess(endpoint=hub.url, **access))  # type: ignore[arg-type]


def files_in(cache: Path) -> list[Path]:
    """What a download left in the cache: blobs, partial blobs and snapshot entries."""
    return sorted(
        path
        for path in cache.rglob("*")
        if (path.is_file() or path.is_symlink()) and {"blobs", "snapshots"} & set(path.parts)
    )


def test_download_is_verified_cached_and_the_next_fetch_asks_nothing(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    served = hub.add(REPO, FILE, tiny_gguf)
    progress: list[tuple[int, int | None]] = []
    path = hub_files(hub, tmp_path).fetch(tiny_spec(), lambda *seen: progress.append(seen))
    assert path.read_bytes() == tiny_gguf.read_bytes()
    assert path.parent.parent.name == "snapshots" and path.resolve().name == served.sha256
    assert progress[0] == (0, served.size) and progress[-1] == (served.size, served.size)
    asked = hub.count()

    # A new process (a new ModelFiles) finds it in the cache, checks it, asks nothing.
    again = hub_files(hub, tmp_path)
    assert again.fetch(tiny_spec()) == path
    assert again.local_path(tiny_spec()) == path
    assert hub.count() == asked == 3  # our HEAD, the library's HEAD, one GET


def test_registry_checksum_mismatch_removes_the_file_and_shows_both_hashes(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    served = hub.add(REPO, FILE, tiny_gguf)
    files = hub_files(hub, tmp_path)
    with pytest.raises(ChecksumMismatch) as caught:
        files.fetch(tiny_spec(sha256=WRONG_SHA))
    message = str(caught.value)
    assert served.sha256 in message and WRONG_SHA in message and "removed" in message
    assert files.local_path(tiny_spec()) is None
    assert files_in(tmp_path) == []


def test_hub_checksum_mismatch_removes_the_file_too(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    # The bytes that arrive are not the ones whose sha256 the hub announced.
    hub.add(REPO, FILE, tiny_gguf, etag="ab" * 32)
    files = hub_files(hub, tmp_path)
    with pytest.raises(ChecksumMismatch) as caught:
        files.fetch(tiny_spec())
    actual = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert f"has sha256 {actual}, but the hub expects {'ab' * 32}" in str(caught.value)
    assert files_in(tmp_path) == []


def test_not_enough_disk_fails_before_a_byte_is_written(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    hub.add(REPO, FILE, tiny_gguf)
    hub.claimed_size = 10**16  # 10 PB: no disk here has that free
    with pytest.raises(NotEnoughDisk) as caught:
        hub_files(hub, tmp_path / "cache").fetch(tiny_spec())
    assert "10,000,000,000,000,000 bytes" in str(caught.value) and FILE in str(caught.value)
    assert hub.count("GET") == 0
    assert not (tmp_path / "cache").exists() or files_in(tmp_path / "cache") == []


def missing_repo(hub: LocalHub, gguf: Path) -> ModelSpec:
    return tiny_spec(repo="test-owner/missing-GGUF")


def missing_file(hub: LocalHub, gguf: Path) -> ModelSpec:
    hub.add(REPO, "other.gguf", gguf)
    return tiny_spec()


def missing_revision(hub: LocalHub, gguf: Path) -> ModelSpec:
    hub.add(REPO, FILE, gguf)
    return tiny_spec(revision="v9")


def gated_repo(hub: LocalHub, gguf: Path) -> ModelSpec:
    hub.add(REPO, FILE, gguf, token="hf_good")
    return tiny_spec()


def failing_hub(hub: LocalHub, gguf: Path) -> ModelSpec:
    hub.status_for_all = 503
    return tiny_spec()


Setup = Callable[[LocalHub, Path], ModelSpec]

FAILURES: dict[str, tuple[Setup, type[LocalLabError], str]] = {
    "repo not found": (missing_repo, RepoNotFound, "no repository 'test-owner/missing-GGUF'"),
    "file not found": (missing_file, HubFileNotFound, "has no file 'tiny.gguf' at revision 'main'"),
    "revision not found": (missing_revision, RevisionNotFound, "has no revision 'v9'"),
    "gated, no token": (gated_repo, HubAccessDenied, "gated repository and no token was given"),
    "hub failing": (failing_hub, HubError, "answered 503"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_hub_failures_are_typed_name_repo_and_file_and_come_at_once(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path, case: str
) -> None:
    setup, error, words = FAILURES[case]
    spec = setup(hub, tiny_gguf)
    started = time.monotonic()
    with pytest.raises(error) as caught:
        hub_files(hub, tmp_path).fetch(spec)
    assert time.monotonic() - started < 2  # one round trip, not the library's retries
    message = str(caught.value)
    assert words in message and spec.repo in message and spec.file in message
    assert hub.count("GET") == 0 and files_in(tmp_path) == []


def test_unreachable_hub_fails_at_once_naming_it(hub: LocalHub, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    files = ModelFiles(str(tmp_path), access=HubAccess(endpoint=endpoint))
    started = time.monotonic()
    with pytest.raises(HubUnreachable) as caught:
        files.fetch(tiny_spec())
    assert time.monotonic() - started < 2
    assert endpoint in str(caught.value) and f"{REPO}/{FILE}" in str(caught.value)


def test_gated_repo_downloads_with_its_token_and_refuses_another(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    hub.add(REPO, FILE, tiny_gguf, token="hf_good")
    with pytest.raises(HubAccessDenied, match="the token given has no access"):
        hub_files(hub, tmp_path, token="hf_bad").fetch(tiny_spec())
    path = hub_files(hub, tmp_path, token="hf_good").fetch(tiny_spec())
    assert path.read_bytes() == tiny_gguf.read_bytes()


def test_a_body_cut_short_is_resumed_where_it_stopped(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    hub.add(REPO, FILE, tiny_gguf)
    hub.cut_after, hub.cuts_left = 300_000, 1
    path = hub_files(hub, tmp_path).fetch(tiny_spec())
    assert path.read_bytes() == tiny_gguf.read_bytes()  # and its sha256 was checked
    assert hub.count("GET") == 2


@pytest.mark.slow
def test_a_download_that_keeps_breaking_keeps_nothing_and_the_next_one_finishes(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    hub.add(REPO, FILE, tiny_gguf)
    hub.cut_after, hub.cuts_left = 300_000, 100
    files = hub_files(hub, tmp_path)
    with pytest.raises(DownloadInterrupted) as caught:
        files.fetch(tiny_spec())  # huggingface_hub resumes 5 times, a second apart
    assert f"{REPO}/{FILE}" in str(caught.value) and "locallab-gguf pull tiny" in str(caught.value)
    assert files.local_path(tiny_spec()) is None and files_in(tmp_path) == []

    hub.cuts_left = 0
    assert files.fetch(tiny_spec()).read_bytes() == tiny_gguf.read_bytes()


def test_a_stopped_download_keeps_nothing(hub: LocalHub, tiny_gguf: Path, tmp_path: Path) -> None:
    hub.add(REPO, FILE, tiny_gguf)

    def stop_after_the_first_bytes(done: int, total: int | None) -> None:
        if done > 0:
            raise LoadCancelled("stopped")

    files = hub_files(hub, tmp_path)
    with pytest.raises(LoadCancelled):
        files.fetch(tiny_spec(), stop_after_the_first_bytes)
    assert files.local_path(tiny_spec()) is None and files_in(tmp_path) == []


def test_partials_left_by_a_killed_download_are_removed(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    served = hub.add(REPO, FILE, tiny_gguf)
    blobs = tmp_path / "models--test-owner--tiny-GGUF" / "blobs"
    blobs.mkdir(parents=True)
    stale = blobs / f"{served.sha256}.1234abcd.incomplete"
    stale.write_bytes(b"GGUF half")
    hub_files(hub, tmp_path).fetch(tiny_spec())
    assert not stale.exists()
    assert list(blobs.iterdir()) == [blobs / served.sha256]


def test_offline_loads_the_cache_without_a_request_and_refuses_the_rest_at_once(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    hub.add(REPO, FILE, tiny_gguf)
    hub.add(REPO, "other.gguf", tiny_gguf)
    cached = hub_files(hub, tmp_path).fetch(tiny_spec())
    asked = hub.count()

    offline = hub_files(hub, tmp_path, offline=True)
    assert offline.fetch(tiny_spec()) == cached
    with pytest.raises(ModelNotCached) as caught:
        offline.fetch(tiny_spec(file="other.gguf"))
    assert "offline" in str(caught.value) and "locallab-gguf pull tiny" in str(caught.value)
    assert hub.count() == asked


def test_hub_access_comes_from_settings_then_the_hf_variables() -> None:
    env = {"HF_ENDPOINT": "http://mirror.local/", "HF_TOKEN": "hf_env", "HF_HUB_OFFLINE": "1"}
    from_env = hub_access(Settings(), env)
    assert (from_env.endpoint, from_env.token, from_env.offline) == (
        "http://mirror.local",
        "hf_env",
        True,
    )
    flagged = hub_access(Settings(hf_token="hf_flag", offline=True), {})
    assert (flagged.endpoint, flagged.token, flagged.offline) == (
        "https://huggingface.co",
        "hf_flag",
        True,
    )
    assert "hf_flag" not in repr(flagged)
