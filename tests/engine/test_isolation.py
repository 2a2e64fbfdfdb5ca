"""A request's problem is that request's alone: bad input is refused at submit, and whatever
goes wrong while one request is served ends that request only.

Each test runs a healthy greedy stream beside the bad request and checks that the stream
finishes intact, with the same text as the same request run alone.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import msgspec
import pytest
from llama_cpp import Llama

from locallab_gguf.engine.runtime import grammar
from locallab_gguf.engine.runtime.scheduler import BatchEngine
from locallab_gguf.engine.types import GenerationRequest
from locallab_gguf.engine.worker.thread_runner import LocalEngine
from locallab_gguf.errors import InvalidRequest
from tests.conftest import DEFAULT_ID, DETERMINISTIC_SETTINGS, sse_events
from tests.support.engine_harness import EngineHarness
from tests.support.servers import RunningServer, wait_until

# The healthy stream beside each bad request must equal the same request alone: that holds
# in the deterministic mode (one KV region per slot, one attention kernel).
THREAD_SETTINGS = msgspec.structs.replace(DETERMINISTIC_SETTINGS, engine_isolation="thread")
HEALTHY = {"model": DEFAULT_ID, "prompt": "Once upon a time", "max_tokens": 64, "temperature": 0}
BOOLEAN = {"name": "answer", "schema": {"type": "boolean"}}


def stream_completion(server: RunningServer, body: dict[str, Any]) -> tuple[str, str | None]:
    """The text of a streamed /v1/completions request and its finish_reason (None: it broke)."""
    text, finish = [], None
    # A client of its own: it runs in a thread beside the test's requests.
    with (
        httpx.Client(base_url=server.url, timeout=120) as client,
        client.stream("POST", "/v1/completions", json={**body, "stream": True}) as reply,
    ):
        assert reply.status_code == 200
        for data in sse_events(reply.iter_lines()):
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return "".join(text), None
            choice = chunk["choices"][0]
            text.append(choice["text"])
            finish = choice["finish_reason"] or finish
    return "".join(text), finish


_ALONE: dict[str, tuple[str, str | None]] = {}


def healthy_alone(server: RunningServer) -> tuple[str, str | None]:
    """The healthy stream run alone on `server` (once per server)."""
    if server.url not in _ALONE:
        _ALONE[server.url] = stream_completion(server, HEALTHY)
    return _ALONE[server.url]


class Beside:
    """A healthy stream in flight while the body of the `with` sends bad requests."""

    def __init__(self, server: RunningServer) -> None:
        self._server = server
        self.alone = healthy_alone(server)
        self._result: list[tuple[str, str | None]] = []
        self._thread = threading.Thread(target=lambda: self._result.append(self._run()))

    def _run(self) -> tuple[str, str | None]:
        return stream_completion(self._server, HEALTHY)

    def __enter__(self) -> Beside:
        busy = self._server.engine_stats().completion_tokens_total
        self._thread.start()
        # In flight: the engine has produced tokens for it.
        wait_until(lambda: self._server.engine_stats().completion_tokens_total > busy + 2)
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=120)
        if exc[0] is None:
            assert self._result == [self.alone], "the healthy stream was disturbed"
            assert self.alone[1] in ("stop", "length")


@pytest.fixture(scope="module")
def server(deterministic_server: RunningServer) -> RunningServer:
    return deterministic_server


@pytest.fixture(scope="module")
def eog_tokens(model_path: Path) -> Iterator[list[int]]:
    """Every end-of-generation token of the model, to ban them all with logit_bias."""
    llama = Llama(str(model_path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    yield [t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    llama.close()


@pytest.fixture(scope="module")
def thread_server(registry: Any) -> Iterator[RunningServer]:
    """A server whose engine runs on a thread of this process (--engine-isolation thread)."""
    from locallab_gguf.models.files import ModelFiles
    from locallab_gguf.serving.loader import local_engine_opener
    from locallab_gguf.serving.model_manager import ModelManager
    from tests.support.servers import app_of, serving

    manager = ModelManager(registry, ModelFiles(), local_engine_opener(THREAD_SETTINGS))
    with serving(app_of(THREAD_SETTINGS, manager, initial_model=DEFAULT_ID)) as running:
        yield running


def batch_engine(server: RunningServer) -> BatchEngine:
    current = server.services.manager.current
    assert current is not None and isinstance(current.engine, LocalEngine)
    return current.engine.engine


def chat(server: RunningServer, **body: Any) -> httpx.Response:
    messages = [{"role": "user", "content": "Is the sky blue?"}]
    return server.client.post(
        "/v1/chat/completions", json={"model": DEFAULT_ID, "messages": messages, **body}
    )


def test_an_empty_prompt_is_refused_naming_the_field(server: RunningServer) -> None:
    with Beside(server):
        for prompt in ("", [""], []):
            reply = server.client.post(
                "/v1/completions", json={"model": DEFAULT_ID, "prompt": prompt}
            )
            assert reply.status_code == 400, reply.text
            assert reply.json()["error"]["param"] == "prompt"
            assert "empty" in reply.json()["error"]["message"]
        for body in ({"prompt": ""}, {"prompts": [""]}):
            path = "/generate" if "prompt" in body else "/generate/batch"
            reply = server.client.post(path, json=body)
            assert reply.status_code == 400, reply.text
            assert "prompt" in reply.text


def test_the_engine_refuses_a_request_of_no_tokens(engine_harness: EngineHarness) -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        engine_harness.engine.submit(10**9, GenerationRequest(prompt="", max_tokens=4))


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "string", "maxLength": 20000}, "maxLength at / is 20,000"),
        (
            {"type": "array", "items": {"type": "integer"}, "maxItems": 100000},
            "maxItems at / is 100,000",
        ),
        ({"type": "string", "minLength": 5000}, "minLength at / is 5,000"),
        ({"enum": [f"value {i}" for i in range(20000)]}, "bytes"),
        ({"enum": [f"v{i}" for i in range(1000)]}, "the enum at / has 1,000 values"),
        ({"type": "string", "pattern": "^a{0,20000}$"}, "20,000 times"),
        (
            functools.reduce(lambda inner, _: {"type": "array", "items": inner}, range(100), {}),
            "levels deep",
        ),
    ],
)
def test_a_schema_above_the_limits_is_refused_naming_limit_and_value(
    server: RunningServer, schema: dict[str, Any], named: str
) -> None:
    with Beside(server):
        reply = chat(
            server,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]["message"]
    assert named in message
    assert "at most" in message


def test_a_grammar_that_allows_no_token_ends_that_request_alone(
    server: RunningServer, eog_tokens: list[int]
) -> None:
    """A boolean that must end, with the end banned: llama.cpp aborted the worker before."""
    banned = {str(token): -100 for token in eog_tokens}
    body = {
        "response_format": {"type": "json_schema", "json_schema": BOOLEAN},
        "logit_bias": banned,
        "max_tokens": 50,
    }
    with Beside(server):
        for temperature in (0, 1):
            reply = chat(server, temperature=temperature, **body)
            assert reply.status_code == 400, reply.text
            assert "grammar" in reply.json()["error"]["message"]
        streamed = server.client.post(
            "/v1/chat/completions",
            json={
                "model": DEFAULT_ID,
                "messages": [{"role": "user", "content": "Yes?"}],
                "stream": True,
                **body,
            },
        )
        errors = [
            json.loads(data)["error"]
            for data in sse_events(streamed.iter_lines())
            if "error" in data
        ]
        assert [error["type"] for error in errors] == ["invalid_request_error"]
        assert "grammar" in errors[0]["message"]
    assert server.services.manager.current.engine.restarts == 0  # type: ignore[union-attr]


def test_a_grammar_dead_end_does_not_kill_a_server_without_isolation(
    thread_server: RunningServer, eog_tokens: list[int]
) -> None:
    banned = {str(token): -100 for token in eog_tokens}
    with Beside(thread_server):
        reply = chat(
            thread_server,
            response_format={"type": "json_schema", "json_schema": BOOLEAN},
            logit_bias=banned,
            temperature=1,
        )
        assert reply.status_code == 400, reply.text
    assert thread_server.client.get("/health").json()["model_status"] == "loaded"


@pytest.mark.parametrize("temperature", [1e-38, 1e-45])
def test_a_vanishing_temperature_samples_greedily(
    server: RunningServer, temperature: float
) -> None:
    with Beside(server) as beside:
        tiny = stream_completion(server, {**HEALTHY, "temperature": temperature})
        json_reply = chat(
            server, temperature=temperature, response_format={"type": "json_object"}, max_tokens=16
        )
    assert tiny == beside.alone
    assert json_reply.status_code == 200, json_reply.text


@pytest.mark.parametrize("seed", [-1, 2**32 - 1, 2**63 - 1, -(2**63)])
def test_every_seed_repeats_its_sample(server: RunningServer, seed: int) -> None:
    body = {**HEALTHY, "max_tokens": 12, "temperature": 1.0, "seed": seed}
    with Beside(server):
        first = stream_completion(server, body)
        second = stream_completion(server, body)
    assert first == second


def hooked_submit(
    engine: BatchEngine, monkeypatch: pytest.MonkeyPatch, hook: Callable[[Any], None]
) -> None:
    """Every request submitted with seed 4242 goes through `hook(job)` once it is queued."""
    submit = engine.submit

    def submit_and_hook(job_id: int, request: GenerationRequest) -> Any:
        accepted = submit(job_id, request)
        if request.sampling.seed == 4242:
            hook(engine._jobs[job_id])
        return accepted

    monkeypatch.setattr(engine, "submit", submit_and_hook)


def test_a_request_whose_sampling_raises_ends_alone(
    thread_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> int:
        raise RuntimeError("a fault in this request's sampler")

    hooked_submit(
        batch_engine(thread_server), monkeypatch, lambda job: setattr(job.sampler, "sample", broken)
    )
    with Beside(thread_server):
        reply = thread_server.client.post("/v1/completions", json={**HEALTHY, "seed": 4242})
    assert reply.status_code == 500
    assert "a fault in this request's sampler" in reply.json()["error"]["message"]


def test_a_decode_that_fails_is_retried_without_the_request_that_failed(
    thread_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = batch_engine(thread_server)
    # A token the vocabulary lacks: llama.cpp refuses the whole batch that holds it.
    hooked_submit(engine, monkeypatch, lambda job: job.tokens.append(engine.model.n_vocab + 7))
    with Beside(thread_server):
        reply = thread_server.client.post("/v1/completions", json={**HEALTHY, "seed": 4242})
    assert reply.status_code == 500
    assert "llama_decode failed" in reply.json()["error"]["message"]


def test_a_slow_grammar_compile_stalls_no_other_stream(
    thread_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compile runs in submit: while one is held up, another stream runs to its end."""
    release = threading.Event()
    compiling = threading.Event()
    real = grammar.json_grammar

    def slow(schema: Any) -> str:
        compiling.set()
        assert release.wait(timeout=120)
        return real(schema)

    reference = healthy_alone(thread_server)
    monkeypatch.setattr(grammar, "json_grammar", slow)
    answers: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.append(
            chat(
                thread_server,
                response_format={"type": "json_schema", "json_schema": BOOLEAN},
                temperature=0,
            )
        )
    )
    waiting.start()
    try:
        assert compiling.wait(timeout=60)
        assert stream_completion(thread_server, HEALTHY) == reference
    finally:
        release.set()
        waiting.join(timeout=120)
    assert answers[0].status_code == 200
    assert json.loads(answers[0].json()["choices"][0]["message"]["content"]) in (True, False)
