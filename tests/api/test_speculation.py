"""Speculative decoding as the API surfaces offer it: a `speculative` flag per request on
LocalLab's, OpenAI's (chat completions and Responses), Ollama's and Anthropic's routes, drafted
and accepted tokens in /system/info and /metrics, and a client that leaves mid-draft."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEFAULT_ID, TEST_SETTINGS, sse_events
from tests.support.servers import RunningServer

PASSAGE = (
    "Every morning the baker lit the oven, weighed the flour and the salt, and shaped the loaves "
    "by hand while the town slept."
)
COPY = f"{PASSAGE}\n\nRepeat the text above exactly."
MESSAGES = [{"role": "user", "content": COPY}]

Reader = Callable[[Any], Any]


def at(path: str) -> Reader:
    """Reads the value at a dotted path ("choices.0.message.content") of an answer."""

    def read(answer: Any) -> Any:
        for key in path.split("."):
            answer = answer[int(key)] if key.isdigit() else answer[key]
        return answer

    return read


def output_text(response: Any) -> str:
    """A Responses API answer's text: its message items' output_text parts, as the SDKs'
    `output_text` joins them (a thinking model puts a reasoning item before the message)."""
    return "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


# (route, body without the flag, where the flag goes, how the answer's text is read)
SURFACES: list[tuple[str, dict[str, Any], str, Reader]] = [
    ("/generate", {"prompt": COPY, "max_length": 24, "temperature": 0}, "", at("response")),
    (
        "/v1/chat/completions",
        {"model": DEFAULT_ID, "messages": MESSAGES, "max_tokens": 24, "temperature": 0},
        "",
        at("choices.0.message.content"),
    ),
    (
        "/v1/responses",
        {"model": DEFAULT_ID, "input": COPY, "max_output_tokens": 24, "temperature": 0},
        "",
        output_text,
    ),
    (
        "/api/chat",
        {"model": DEFAULT_ID, "messages": MESSAGES, "stream": False},
        "options",
        at("message.content"),
    ),
    (
        "/v1/messages",
        {"model": DEFAULT_ID, "messages": MESSAGES, "max_tokens": 24, "temperature": 0},
        "",
        at("content.0.text"),
    ),
]
ROUTES = [route for route, *_ in SURFACES]
# Where each surface's error shape carries its message.
ERROR_MESSAGE: dict[str, Reader] = {
    "/generate": at("detail"),
    "/v1/chat/completions": at("error.message"),
    "/v1/responses": at("error.message"),
    "/api/chat": at("error"),
    "/v1/messages": at("error.message"),
}


def with_flag(body: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    if not where:
        return {**body, "speculative": value}
    options = {"temperature": 0, "num_predict": 24, "speculative": value}
    return {**body, where: options}


@pytest.mark.parametrize(("route", "body", "where", "text"), SURFACES, ids=ROUTES)
def test_a_request_may_turn_speculation_off_and_gets_the_same_answer(
    deterministic_server: RunningServer,
    route: str,
    body: dict[str, Any],
    where: str,
    text: Reader,
) -> None:
    client = deterministic_server.client
    answers = []
    for value in (False, True):
        reply = client.post(route, json=with_flag(body, where, value))
        assert reply.status_code == 200, reply.text
        answers.append(text(reply.json()))
    assert answers[0] == answers[1]
    assert answers[0]


@pytest.mark.parametrize(("route", "body", "where", "text"), SURFACES, ids=ROUTES)
def test_a_speculative_flag_that_is_not_a_boolean_is_a_400_naming_it(
    server: RunningServer, route: str, body: dict[str, Any], where: str, text: Reader
) -> None:
    reply = server.client.post(route, json=with_flag(body, where, "sometimes"))
    assert reply.status_code == 400, reply.text
    assert "speculative" in ERROR_MESSAGE[route](reply.json())


def test_system_info_and_metrics_count_drafted_and_accepted_tokens_by_source(
    server: RunningServer,
) -> None:
    reply = server.client.post("/generate", json=SURFACES[0][1])
    assert reply.status_code == 200, reply.text
    info = server.client.get("/system/info").json()
    speculation = info["model"]["engine"]["speculation"]
    assert set(speculation) == {
        "ngram_drafted",
        "ngram_accepted",
        "grammar_drafted",
        "grammar_accepted",
        "model_drafted",
        "model_accepted",
        "extra_token_cost",
    }
    assert speculation["extra_token_cost"] == TEST_SETTINGS.draft_cost  # as configured
    assert speculation["ngram_drafted"] >= speculation["ngram_accepted"] >= 0
    families = {
        family.name: family
        for family in text_string_to_metric_families(server.client.get("/metrics").text)
    }
    drafted = families["locallab_speculative_tokens_drafted"]
    sources = {sample.labels["source"] for sample in drafted.samples}
    assert sources == {"ngram", "grammar", "model"}
    assert "locallab_speculative_tokens_accepted" in families


def ngram_drafted(server: RunningServer) -> int:
    # Read in-process, not over HTTP: cheap enough to look at after every streamed chunk.
    drafted: int = server.engine_stats().speculation.ngram_drafted
    return drafted


def streamed_chat(http: httpx.Client, body: dict[str, Any]) -> tuple[str, str | None]:
    """A whole streamed chat answer: its text and its finish_reason."""
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200, reply.read()
        chunks = [json.loads(event) for event in sse_events(reply.iter_lines())[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    return text, chunks[-1]["choices"][0]["finish_reason"]


def test_a_client_that_leaves_mid_draft_frees_its_slot_and_changes_no_later_answer(
    deterministic_server: RunningServer,
) -> None:
    server = deterministic_server
    # The answer copies its prompt, so prompt lookup drafts; SmolLM2's end-of-text and turn
    # tokens (0-2) are banned so that it runs to max_tokens, long after the client has left.
    body = {
        "model": DEFAULT_ID,
        "messages": MESSAGES,
        "max_tokens": 200,
        "temperature": 0,
        "logit_bias": {"0": -100, "1": -100, "2": -100},
    }
    before = server.client.get("/system/info").json()["model"]["engine"]["speculation"]
    heard = ""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as reply:
            assert reply.status_code == 200, reply.read()
            for line in reply.iter_lines():
                if not line.startswith("data: "):
                    continue
                choice = json.loads(line.removeprefix("data: "))["choices"][0]
                assert choice["finish_reason"] is None, "the answer ended before any draft"
                heard += choice["delta"].get("content") or ""
                if heard and ngram_drafted(server) > before["ngram_drafted"]:
                    break  # drafts are being taken: hang up mid-answer
        server.wait_until_idle(timeout=5)

        after = server.client.get("/system/info").json()["model"]["engine"]["speculation"]
        assert after["ngram_drafted"] > before["ngram_drafted"]
        # The same request again, likely in the slot the client left, and without speculation.
        again, finish = streamed_chat(http, body)
        without, _ = streamed_chat(http, {**body, "speculative": False})
    assert finish == "length"
    assert again == without
    assert again.startswith(heard)
