"""A crash of the engine worker loses nothing it did not cause.

Requests in flight are resumed on the restarted worker from the tokens they had produced; the
request that crashed it (found through the worker's activity notes) ends alone, with an error
naming the crash. Every text is compared with the same request served alone, without a crash,
by the same server in the same run.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import threading
import time
from typing import Any

import httpx
import msgspec
import psutil
import pytest

from locallab_gguf.engine.types import GenerationRequest
from locallab_gguf.engine.worker.activity import ActivityBlock, Doing, Note
from locallab_gguf.engine.worker.process_runner import WorkerEngine
from locallab_gguf.engine.worker.resume import InFlightJobs
from locallab_gguf.engine.worker.worker_hooks import CRASH_MARKER_ENV
from tests.conftest import DEFAULT_ID, DETERMINISTIC_SETTINGS, ServerFactory, sse_events
from tests.support.servers import RunningServer, wait_until

# A resumed request's text must equal the same request alone: that holds in the deterministic
# mode, where re-evaluating the produced tokens uses the arithmetic that produced them.
WORKER_SETTINGS = msgspec.structs.replace(DETERMINISTIC_SETTINGS, engine_isolation="process")
PROMPTS = ("Once upon a time", "The best way to learn a language is", "My favourite food is")
MAX_TOKENS = 32
CRASH_MARKER = "CRASH-THE-ENGINE-HERE"


def engine_of(server: RunningServer) -> WorkerEngine:
    engine = server.services.manager.current.engine  # type: ignore[union-attr]
    assert isinstance(engine, WorkerEngine)
    return engine


def post(server: RunningServer, path: str, body: dict[str, Any]) -> httpx.Response:
    # A generous timeout: on a machine shared with many others, a reference takes a while.
    return httpx.post(f"{server.url}{path}", json=body, timeout=600)


def greedy(prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, "max_length": MAX_TOKENS, "temperature": 0}


class Stream(threading.Thread):
    """A streaming request (/generate unless told) read on a thread of its own."""

    def __init__(
        self, server: RunningServer, body: dict[str, Any], path: str = "/generate"
    ) -> None:
        super().__init__(daemon=True)
        self._url = f"{server.url}{path}"
        self._body = {**body, "stream": True}
        self.lines: list[str] = []
        self.start()

    def run(self) -> None:
        with httpx.stream("POST", self._url, json=self._body, timeout=600) as reply:
            for line in reply.iter_lines():
                self.lines.append(line)

    def events(self) -> list[str]:
        return sse_events(list(self.lines))

    def result(self) -> list[str]:
        self.join(timeout=600)
        events = self.events()
        assert events[-1] == "[DONE]", events
        return events[:-1]

    def text(self) -> str:
        events = self.result()
        assert not any(event.startswith("[ERROR]") for event in events), events
        return "".join(events)


class Answer(threading.Thread):
    """A non-streaming request on a thread of its own."""

    def __init__(self, server: RunningServer, path: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self._url = f"{server.url}{path}"
        self._body = body
        self.reply: httpx.Response | None = None
        self.start()

    def run(self) -> None:
        self.reply = httpx.post(self._url, json=self._body, timeout=600)

    def result(self) -> httpx.Response:
        self.join(timeout=600)
        assert self.reply is not None
        return self.reply


def kill_while_decoding(server: RunningServer, jobs: int) -> tuple[int, ...]:
    """SIGSEGV the worker while it is in a llama_decode of at least `jobs` requests.

    The worker is stopped to look at its activity notes, so the kill lands where they say:
    a kill that happened to fall into one request's sampling would rightly blame it alone.
    """
    engine = engine_of(server)
    pid = engine.pid
    assert pid is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED)
        note = engine.activity()[0]
        if note.doing is Doing.DECODING and len(note.job_ids) >= jobs:
            os.kill(pid, signal.SIGSEGV)
            os.kill(pid, signal.SIGCONT)
            return note.job_ids
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.003)
    raise AssertionError(f"the worker never decoded a batch of {jobs} requests")


def wait_for_text(*streams: Stream, events: int = 2) -> None:
    wait_until(lambda: all(len(stream.events()) >= events for stream in streams), timeout=300)


def test_every_request_in_flight_resumes_after_the_worker_is_killed(
    make_server: ServerFactory,
) -> None:
    server = make_server(WORKER_SETTINGS)
    alone = [post(server, "/generate", greedy(prompt)).json() for prompt in PROMPTS]
    # Sampled, with a seed: the resumed sampler draws on from where its RNG was.
    seeded = {
        "model": DEFAULT_ID,
        "prompt": PROMPTS[2],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.8,
        "seed": 11,
    }
    seeded_alone = post(server, "/v1/completions", seeded).json()
    engine = engine_of(server)
    pid = engine.pid

    streams = [Stream(server, greedy(prompt)) for prompt in PROMPTS[:2]]
    answer = Answer(server, "/generate", greedy(PROMPTS[2]))
    seeded_stream = Stream(
        server, {**seeded, "stream_options": {"include_usage": True}}, path="/v1/completions"
    )
    wait_for_text(*streams, seeded_stream)
    kill_while_decoding(server, jobs=4)

    for stream, reference in zip(streams, alone[:2], strict=True):
        assert stream.text() == reference["response"]
    reply = answer.result()
    assert reply.status_code == 200
    assert reply.json()["response"] == alone[2]["response"]
    assert reply.json()["usage"] == alone[2]["usage"]
    chunks = [json.loads(event) for event in seeded_stream.result()]
    text = "".join(chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"])
    assert text == seeded_alone["choices"][0]["text"]
    # The same counts, but for how much of the prompt each found cached (the resumed one
    # re-evaluated its prompt in the new worker).
    resumed_usage, alone_usage = chunks[-1]["usage"], seeded_alone["usage"]
    del resumed_usage["prompt_tokens_details"], alone_usage["prompt_tokens_details"]
    assert resumed_usage == alone_usage
    assert engine.restarts == 1
    assert engine.pid != pid


def test_a_request_that_crashes_the_worker_while_sampling_ends_alone(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CRASH_MARKER_ENV, CRASH_MARKER)
    server = make_server(WORKER_SETTINGS)
    alone = [post(server, "/generate", greedy(p)).json() for p in PROMPTS[:2]]
    streams = [Stream(server, greedy(prompt)) for prompt in PROMPTS[:2]]
    wait_for_text(*streams)

    culprit = post(server, "/generate", greedy(f"{CRASH_MARKER} {PROMPTS[2]}"))

    assert culprit.status_code == 500
    detail = culprit.json()["detail"]
    assert "killed by SIGSEGV while sampling this request" in detail
    for stream, reference in zip(streams, alone[:2], strict=True):
        assert stream.text() == reference["response"]
    assert engine_of(server).restarts == 1
    again = post(server, "/generate", greedy(PROMPTS[0]))
    assert again.json()["response"] == alone[0]["response"]


def test_a_request_in_the_batch_of_two_crashes_is_ended(make_server: ServerFactory) -> None:
    server = make_server(WORKER_SETTINGS)
    long_request = {**greedy(PROMPTS[0]), "max_length": 4 * MAX_TOKENS}
    second_alone = post(server, "/generate", greedy(PROMPTS[1])).json()

    first = Stream(server, long_request)
    wait_for_text(first)
    kill_while_decoding(server, jobs=1)  # the first stream is a suspect once, and resumes
    wait_for_text(first, events=len(first.events()) + 2)
    second = Stream(server, greedy(PROMPTS[1]))
    wait_for_text(second)
    kill_while_decoding(server, jobs=2)  # both are suspects: the first for the second time

    events = first.result()
    assert events[-1].startswith("[ERROR] the engine process was killed by SIGSEGV")
    assert "the second crash in this request's batches" in events[-1]
    assert not any(event.startswith("[ERROR]") for event in events[:-1])
    assert second.text() == second_alone["response"]


def test_a_note_torn_by_the_kill_blames_nobody() -> None:
    block = ActivityBlock.create(lanes=2, max_jobs=4)
    try:
        block.write(0, Doing.SAMPLING, (7,))
        block.write(1, Doing.DECODING, (7, 8))
        # A kill between the two halves of a write leaves its version odd.
        struct.pack_into("<I", block._map, 0, 3)
        notes = block.read()
    finally:
        block.close()
    assert notes == [Note(Doing.UNKNOWN), Note(Doing.DECODING, (7, 8))]
    jobs = InFlightJobs()
    for job_id in (7, 8, 9):
        jobs.add(job_id, GenerationRequest(prompt="x", max_tokens=1))
    verdict = jobs.judge_crash("the engine process was killed by SIGSEGV", notes)
    assert verdict.ended == {} and verdict.resumed == [7, 8, 9]
