"""Speculative decoding as the API surfaces offer it: a `speculative` flag per request on
LocalLab's, OpenAI's and Ollama's routes, and drafted and accepted tokens in /system/info and
/metrics."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEFAULT_ID
from tests.support.servers import RunningServer

PASSAGE = (
    "Every morning the baker lit the oven, weighed the flour and the salt, and shaped the loaves "
    "by hand while the town slept."
)
COPY = f"{PASSAGE}\n\nRepeat the text above exactly."
MESSAGES = [{"role": "user", "content": COPY}]

# (route, body without the flag, where the flag goes, how the answer's text is read)
SURFACES: list[tuple[str, dict[str, Any], str, str]] = [
    ("/generate", {"prompt": COPY, "max_length": 24, "temperature": 0}, "", "response"),
    (
        "/v1/chat/completions",
        {"model": DEFAULT_ID, "messages": MESSAGES, "max_tokens": 24, "temperature": 0},
        "",
        "choices.0.message.content",
    ),
    (
        "/api/chat",
        {"model": DEFAULT_ID, "messages": MESSAGES, "stream": False},
        "options",
        "message.content",
    ),
]


def with_flag(body: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    if not where:
        return {**body, "speculative": value}
    options = {"temperature": 0, "num_predict": 24, "speculative": value}
    return {**body, where: options}


def read(answer: Any, path: str) -> Any:
    for key in path.split("."):
        answer = answer[int(key)] if key.isdigit() else answer[key]
    return answer


@pytest.mark.parametrize(("route", "body", "where", "text"), SURFACES)
def test_a_request_may_turn_speculation_off_and_gets_the_same_answer(
    deterministic_server: RunningServer, route: str, body: dict[str, Any], where: str, text: str
) -> None:
    client = deterministic_server.client
    answers = []
    for value in (False, True):
        reply = client.post(route, json=with_flag(body, where, value))
        assert reply.status_code == 200, reply.text
        answers.append(read(reply.json(), text))
    assert answers[0] == answers[1]
    assert answers[0]


@pytest.mark.parametrize(("route", "body", "where", "text"), SURFACES)
def test_a_speculative_flag_that_is_not_a_boolean_is_a_400_naming_it(
    server: RunningServer, route: str, body: dict[str, Any], where: str, text: str
) -> None:
    reply = server.client.post(route, json=with_flag(body, where, "sometimes"))
    assert reply.status_code == 400, reply.text
    assert "speculative" in reply.text


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
    }
    assert speculation["ngram_drafted"] >= speculation["ngram_accepted"] >= 0
    families = {
        family.name: family
        for family in text_string_to_metric_families(server.client.get("/metrics").text)
    }
    drafted = families["locallab_speculative_tokens_drafted"]
    sources = {sample.labels["source"] for sample in drafted.samples}
    assert sources == {"ngram", "grammar"}
    assert "locallab_speculative_tokens_accepted" in families
