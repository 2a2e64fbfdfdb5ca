"""Every error status of the API, each with a useful detail, and the server serving after."""

from __future__ import annotations

import contextlib
import logging

import msgspec
import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from locallab_gguf.api.common.errors import EXCEPTION_HANDLERS
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.servers import RunningServer, wait_until

OK = {"prompt": "Once upon a time", "max_length": 4, "temperature": 0}


def assert_still_serving(server: RunningServer) -> None:
    reply = server.client.post("/generate", json=OK)
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({**OK, "temperature": 2.5}, "temperature", "<= 2.0"),
        ({**OK, "temperature": "hot"}, "temperature", "Expected `float`"),
        ({**OK, "top_p": 0}, "top_p", "> 0.0"),
        ({**OK, "max_length": 0}, "max_length", ">= 1"),
        ({**OK, "prompt": ""}, "prompt", "length >= 1"),
        ({"max_length": 4}, "prompt", "missing required field"),
        ({**OK, "seed": -1}, "seed", ">= 0"),
        ({**OK, "seed": 2**63}, "seed", "<= 9223372036854775807"),
        ({**OK, "max_length": 10**20}, "max_length", "<= 2147483647"),
        ({**OK, "top_k": 10**20}, "top_k", "<= 2147483647"),
    ],
)
def test_invalid_parameters_are_400_naming_the_field(
    server: RunningServer, body: dict[str, object], field: str, message: str
) -> None:
    reply = server.client.post("/generate", json=body)
    assert reply.status_code == 400
    detail = reply.json()["detail"]
    assert field in detail and message in detail, detail
    assert_still_serving(server)


def test_chat_role_outside_the_three_is_400(server: RunningServer) -> None:
    reply = server.client.post(
        "/chat", json={"messages": [{"role": "wizard", "content": "hi"}], "max_length": 4}
    )
    assert reply.status_code == 400
    assert "role" in reply.json()["detail"]


def test_empty_messages_are_400(server: RunningServer) -> None:
    reply = server.client.post("/chat", json={"messages": []})
    assert reply.status_code == 400
    assert "messages" in reply.json()["detail"]


def test_batch_of_more_than_32_prompts_is_400(server: RunningServer) -> None:
    reply = server.client.post("/generate/batch", json={"prompts": ["a"] * 33})
    assert reply.status_code == 400
    assert "prompts" in reply.json()["detail"]


def test_body_that_is_not_json_is_400(server: RunningServer) -> None:
    reply = server.client.post(
        "/generate", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json()["detail"]
    assert_still_serving(server)


def test_a_registry_model_not_on_this_machine_is_refused_offline_saying_how_to_get_it(
    server: RunningServer,
) -> None:
    # A request loads the model it names; the tests run offline, and this one is not local.
    reply = server.client.post("/generate", json={**OK, "model_id": "qwen2.5-0.5b-instruct"})
    assert reply.status_code == 404  # not here, as Ollama answers a model not pulled
    detail = reply.json()["detail"]
    assert "qwen2.5-0.5b-instruct" in detail and "locallab-gguf pull" in detail
    assert_still_serving(server)


def test_unknown_model_is_404(server: RunningServer) -> None:
    for reply in (
        server.client.post("/generate", json={**OK, "model_id": "no-such-model"}),
        server.client.post("/models/load", json={"model_id": "no-such-model"}),
    ):
        assert reply.status_code == 404
        assert "no-such-model" in reply.json()["detail"]
    assert_still_serving(server)


def test_unknown_route_is_404_with_detail(server: RunningServer) -> None:
    reply = server.client.get("/no/such/route")
    assert reply.status_code == 404
    assert "/no/such/route" in reply.json()["detail"]


def test_wrong_method_is_405_with_detail(server: RunningServer) -> None:
    reply = server.client.get("/generate")
    assert reply.status_code == 405
    assert reply.json()["detail"]


def test_the_largest_seed_is_served(server: RunningServer) -> None:
    reply = server.client.post("/generate", json={**OK, "seed": 2**63 - 1, "temperature": 0.8})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    # Sampled: the model may end its answer even sooner.
    assert body["usage"]["completion_tokens"] == 4 or body["finish_reason"] == "stop"


def test_a_failure_outside_the_error_table_is_500_with_detail_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @get("/broken", sync_to_thread=False)
    def broken() -> None:
        raise RuntimeError("a bug in a handler")

    app = Litestar([broken], exception_handlers=EXCEPTION_HANDLERS, logging_config=None)
    with caplog.at_level(logging.ERROR), TestClient(app) as client:
        reply = client.get("/broken")
    assert reply.status_code == 500
    assert reply.json() == {"detail": "the server failed: RuntimeError; see the server log"}
    assert "GET /broken failed" in caplog.text and "a bug in a handler" in caplog.text


def test_prompt_longer_than_the_context_is_413(server: RunningServer) -> None:
    long_prompt = "word " * 2000  # about 2,000 tokens; the test context is 1,024
    reply = server.client.post("/generate", json={**OK, "prompt": long_prompt})
    assert reply.status_code == 413
    detail = reply.json()["detail"]
    assert "tokens; the context is 1,024" in detail
    assert_still_serving(server)


def test_body_over_the_limit_is_413(make_server: ServerFactory) -> None:
    server = make_server(msgspec.structs.replace(TEST_SETTINGS, max_body_bytes=2048))
    reply = server.client.post("/generate", json={**OK, "prompt": "x" * 4096})
    assert reply.status_code == 413
    assert "larger than the server accepts" in reply.json()["detail"]
    assert_still_serving(server)


def test_generation_without_a_model_is_503_and_current_is_404(server: RunningServer) -> None:
    assert server.client.post("/models/unload").json()["status"] == "success"
    try:
        assert server.client.get("/health").json() == {
            "status": "healthy",
            "model": None,
            "model_status": "unloaded",
        }
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        for path, body in (
            ("/generate", OK),
            ("/chat", chat),
            ("/generate/batch", {"prompts": ["a"]}),
        ):
            reply = server.client.post(path, json=body)
            assert reply.status_code == 503
            assert "no model is loaded" in reply.json()["detail"]
        current = server.client.get("/models/current")
        assert current.status_code == 404
        assert "no model is loaded" in current.json()["detail"]
    finally:
        assert server.client.post("/models/load", json={"model_id": DEFAULT_ID}).status_code == 200
    assert_still_serving(server)


def test_full_queue_is_503_with_retry_after(make_server: ServerFactory) -> None:
    server = make_server(msgspec.structs.replace(TEST_SETTINGS, parallel=1, queue_size=1))
    long = {"prompt": "Once upon a time", "max_length": 1000, "stream": True}
    with contextlib.ExitStack() as streams:
        # One streaming request takes the only slot; the next waits in the queue of one.
        running = streams.enter_context(server.client.stream("POST", "/generate", json=long))
        assert running.status_code == 200
        wait_until(lambda: server.engine_stats().slots_busy == 1)
        waiting = streams.enter_context(server.client.stream("POST", "/generate", json=long))
        assert waiting.status_code == 200
        wait_until(lambda: server.engine_stats().queue_depth == 1)

        reply = server.client.post("/generate", json=OK)
        assert reply.status_code == 503
        assert int(reply.headers["Retry-After"]) >= 1
        assert "Retry in" in reply.json()["detail"]
    # Both streams hung up, so their slot and queue place are free again.
    server.wait_until_idle(timeout=5)
    assert_still_serving(server)
