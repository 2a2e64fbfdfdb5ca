"""GET /metrics in Prometheus' text format, and the access log: one line per request."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from locallab_gguf.api.common.middleware.keys import ApiKeys
from locallab_gguf.log_format import JsonFormatter
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.registry import Registry
from locallab_gguf.serving.loader import local_engine_opener
from locallab_gguf.serving.model_manager import ModelManager
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.reference import Reference
from tests.support.servers import RunningServer, app_of, free_port, serving

CLI = str(Path(sys.executable).parent / "locallab-gguf")

KEY = "metrics-test-key"
# Keys required and the rate limit on, with a burst small enough to run into.
GUARDED = msgspec.structs.replace(
    TEST_SETTINGS, api_keys=(KEY,), rate_limit=True, burst=5, requests_per_minute=1000
)
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def access(self) -> list[dict[str, object]]:
        return [record.__dict__["fields"] for record in self.records if "fields" in record.__dict__]


@pytest.fixture
def access_log() -> Iterator[Captured]:
    logger = logging.getLogger("locallab_gguf.access")
    handler = Captured()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def guarded(registry: Registry) -> Iterator[RunningServer]:
    """A server that requires KEY and rate-limits, shared by this module's tests."""
    manager = ModelManager(registry, ModelFiles(), local_engine_opener(GUARDED))
    with serving(app_of(GUARDED, manager, initial_model=DEFAULT_ID)) as running:
        running.client.headers["Authorization"] = f"Bearer {KEY}"
        yield running


def scrape(server: RunningServer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels -> value}."""
    reply = server.client.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def one(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str
) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_a_generation_is_counted_timed_and_logged(
    guarded: RunningServer, access_log: Captured, reference: Reference
) -> None:
    before = scrape(guarded)
    with openai.OpenAI(base_url=guarded.url + "/v1", api_key=KEY, max_retries=0) as client:
        reply = client.chat.completions.create(
            model=DEFAULT_ID, messages=QUESTION, temperature=0, user="alice"
        )
    assert reply.usage is not None
    usage = (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    expected = reference.chat(QUESTION)
    assert usage == (expected.prompt_tokens, expected.completion_tokens)
    after = scrape(guarded)

    def grew(name: str, **labels: str) -> float:
        return one(after, name, **labels) - one(before, name, **labels)

    route = {"route": "/v1/chat/completions"}
    assert grew("locallab_http_requests_total", method="POST", status="200", **route) == 1
    assert grew("locallab_http_request_duration_seconds_count", **route) == 1
    model = {"model": DEFAULT_ID}
    assert grew("locallab_prompt_tokens_total", **model) == usage[0]
    assert grew("locallab_generation_tokens_total", **model) == usage[1]
    outcome = reply.choices[0].finish_reason
    assert grew("locallab_generations_total", outcome=outcome, **model) == 1
    for histogram in (
        "locallab_time_to_first_token_seconds",
        "locallab_time_per_output_token_seconds",
        "locallab_queue_wait_seconds",
        "locallab_e2e_request_latency_seconds",
    ):
        assert grew(f"{histogram}_count", **model) == 1, histogram
        assert grew(f"{histogram}_sum", **model) >= 0.0
    ttft = grew("locallab_time_to_first_token_seconds_sum", **model)
    assert 0.0 < ttft <= grew("locallab_e2e_request_latency_seconds_sum", **model)
    assert one(after, "locallab_slots_total") == 4
    assert one(after, "locallab_slots_busy") == 0
    assert one(after, "locallab_queue_depth") == 0
    assert one(after, "locallab_model_state", state="loaded") == 1
    assert one(after, "locallab_model_state", state="loading") == 0
    assert one(after, "locallab_model_load_seconds", **model) > 0

    [line] = [fields for fields in access_log.access() if fields["route"] == route["route"]]
    client_name = ApiKeys([KEY]).identify(f"Bearer {KEY}")
    assert line["client"] == f"key:{client_name}"
    assert (line["method"], line["status"]) == ("POST", 200)
    assert (line["prompt_tokens"], line["completion_tokens"]) == usage
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0
    assert line["user"] == "alice"
    assert all(KEY not in record.getMessage() for record in access_log.records)


def test_metrics_need_the_key_but_never_the_rate_limit(guarded: RunningServer) -> None:
    anonymous = guarded.client.get("/metrics", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    # Far past the burst of 5: a scraper is never refused.
    for _ in range(3 * GUARDED.burst):
        assert guarded.client.get("/metrics").status_code == 200


def test_rate_limit_refusals_and_unknown_routes_are_counted(
    guarded: RunningServer, access_log: Captured
) -> None:
    before = scrape(guarded)
    statuses = [guarded.client.get("/models/current").status_code for _ in range(GUARDED.burst + 3)]
    assert 429 in statuses
    refused = statuses.count(429)
    guarded.client.get("/no/such/route")
    after = scrape(guarded)
    route = {"route": "/models/current"}
    assert (
        one(after, "locallab_rate_limited_requests_total", **route)
        - one(before, "locallab_rate_limited_requests_total", **route)
        == refused
    )
    assert (
        one(after, "locallab_http_requests_total", method="GET", status="429", **route)
        - one(before, "locallab_http_requests_total", method="GET", status="429", **route)
        == refused
    )
    assert (
        one(after, "locallab_http_requests_total", route="unmatched", method="GET", status="404")
        >= 1
    )
    logged = [
        fields["status"] for fields in access_log.access() if fields["route"] == route["route"]
    ]
    assert logged == statuses
    [unmatched] = [fields for fields in access_log.access() if fields["route"] == "unmatched"]
    assert (unmatched["path"], unmatched["status"], unmatched["latency_ms"]) == (
        "/no/such/route",
        404,
        None,
    )


def test_json_log_lines_carry_the_access_fields() -> None:
    record = logging.LogRecord(
        "locallab_gguf.access", logging.INFO, __file__, 1, "GET /x 200", None, None
    )
    record.fields = {"client": "ip:127.0.0.1", "route": "/x", "status": 200, "latency_ms": 1.5}
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "info"
    assert line["logger"] == "locallab_gguf.access"
    assert line["message"] == "GET /x 200"
    assert (line["client"], line["route"], line["status"], line["latency_ms"]) == (
        "ip:127.0.0.1",
        "/x",
        200,
        1.5,
    )
    assert line["time"].endswith("+00:00")


def test_each_server_counts_on_its_own(make_server: ServerFactory, guarded: RunningServer) -> None:
    guarded.client.get("/health")
    fresh = make_server(initial_model=None, wait_for=None)
    samples = scrape(fresh)
    assert (
        one(samples, "locallab_http_requests_total", route="/health", method="GET", status="200")
        == 0
    )
    assert one(samples, "locallab_model_state", state="unloaded") == 1
    assert one(samples, "locallab_slots_total") == 0


@pytest.mark.slow
def test_serve_with_log_format_json_writes_json_lines(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [CLI, "serve", "--port", str(port), "--log-format", "json", "--ctx", "256"],
            env={
                **os.environ,
                "LOCALLAB_PARALLEL": "1",
                "LOCALLAB_THREADS": "2",
            },
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health").json()["model_status"] == "loaded":
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        httpx.get(f"{url}/models/current")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "locallab_gguf.access"]
    assert [line["route"] for line in access if line["route"] == "/models/current"] == [
        "/models/current"
    ]
    assert all(line["client"] == "ip:127.0.0.1" for line in access)
    # The engine's worker process writes the same format; uvicorn's lines come through the
    # server's handler, and its access log is off.
    assert any(line["logger"] == "locallab_gguf.engine.worker.worker" for line in lines)
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    assert not any(line["logger"] == "uvicorn.access" for line in lines)
