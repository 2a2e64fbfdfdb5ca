"""What one client can do to the server and its log: stall, flood, forge, nest, give up.

The connection limits belong to `locallab-gguf serve` (its HTTP protocol), so those tests run
it as a subprocess, as a user does, with short timeouts; waits are generous deadlines, never
expected durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from locallab_gguf.engine.client import EngineClient
from locallab_gguf.log_format import RepeatFilter, TextFormatter
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.serving.loader import local_engine_opener
from tests.api.locallab.test_models import two_model_registry
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.servers import RunningServer, wait_until
from tests.support.subprocess_server import Served, serve

KEY = "test-key-hardening"
FORGED = "2026-11-29 12:00:00,000 INFO locallab_gguf.access: client=ip:6.6.6.6 FORGED"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A keyed server with one-second read deadlines and room for four connections."""
    with serve(
        tmp_path_factory.mktemp("guarded"),
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--max-connections",
        "4",
        "--api-key",
        KEY,
    ) as served:
        yield served


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (60 s at most)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_a_client_that_stalls_in_its_headers_is_cut_off(guarded: Served) -> None:
    with guarded.connect() as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    # A connection that never sends a byte is closed too, without an answer.
    with guarded.connect() as sock:
        assert read_until_closed(sock) == b""
    # A client that sends its request at once is served under the same deadline.
    health = httpx.get(f"{guarded.url}/health", timeout=60)
    assert health.status_code == 200


def test_a_client_that_dribbles_its_body_is_cut_off(guarded: Served) -> None:
    head = (
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: 1000\r\n\r\n"
    )
    with guarded.connect() as sock:
        sock.sendall(head.encode() + b'{"prompt": "')
        sent = 0
        with contextlib.suppress(OSError):
            while sent < 900:  # one byte at a time; the body never completes in time
                sock.sendall(b"a")
                sent += 1
                time.sleep(0.1)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert sent < 900
    # The app heard why its body never came: a 408, not a 500.
    guarded.wait_for_log(lambda log: "route=/generate path=/generate status=408" in log)
    assert "status=500" not in guarded.output()


def test_beyond_the_connection_cap_clients_get_503_until_others_leave(guarded: Served) -> None:
    stalled = []
    try:
        for _ in range(4):
            sock = guarded.connect()
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and then nothing
            stalled.append(sock)
        refused = httpx.get(f"{guarded.url}/health", timeout=60)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
    finally:
        for sock in stalled:
            sock.close()

    def served() -> bool:
        return httpx.get(f"{guarded.url}/health", timeout=60).status_code == 200

    wait_until(served, timeout=60)


def test_forged_log_lines_are_escaped_also_without_a_key(guarded: Served) -> None:
    attack = FORGED + "\x1b[31m\x00\u202e"
    path = "/models/status/nope" + urllib.parse.quote("\n" + attack, safe="")
    with guarded.connect() as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert read_until_closed(sock).startswith(b"HTTP/1.1 401 ")  # no key
    completion = httpx.post(
        f"{guarded.url}/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": DEFAULT_ID, "prompt": "Hi", "max_tokens": 1, "user": "bob\n" + attack},
        timeout=120,
    )
    assert completion.status_code == 200
    log = guarded.wait_for_log(lambda log: "user=" in log and 'path="/models/status/nope' in log)
    lines = log.splitlines()
    assert not any(line.startswith(FORGED[:20]) for line in lines)
    assert not any(char in log for char in "\x1b\x00\u202e")
    assert "\\n2026-11-29 12:00:00,000 INFO" in log
    assert "\\u001b[31m\\u0000" in log


def test_a_flood_of_identical_errors_is_logged_once_per_interval_with_a_count(
    tmp_path: Path,
) -> None:
    """Half-open connections past the file-descriptor limit: the event loop fails to accept,
    again and again; the log says so a few times, with counts, and the server recovers."""
    with serve(
        tmp_path,
        "--header-timeout",
        "2",
        "--max-connections",
        "10000",
        "--log-repeat-interval",
        "1",
        "--log-format",
        "json",
        open_files=160,
    ) as served:
        stalled = []
        try:
            for _ in range(400):
                sock = served.connect()
                sock.sendall(b"GET /health HTTP/1.1\r\n")
                stalled.append(sock)
            served.wait_for_log(lambda log: "more like this" in log)
            # The server closes what it accepted as each deadline passes, so all get in.
            for sock in stalled:
                read_until_closed(sock)
        finally:
            for sock in stalled:
                sock.close()
        wait_until(lambda: httpx.get(f"{served.url}/health", timeout=60).is_success, 60)
        attack = "/nope" + urllib.parse.quote("\n" + FORGED + "\x1b[31m\x00", safe="/")
        assert httpx.get(served.url + attack, timeout=60).status_code == 404
        output = served.wait_for_log(lambda log: "FORGED" in log)
    lines = output.splitlines()
    entries = [json.loads(line) for line in lines]  # every line is still JSON
    accept_failures = [entry for entry in entries if "out of system resource" in entry["message"]]
    # At most one line a second (--log-repeat-interval 1), however long the flood lasted,
    # and the lines say how many more there were.
    moments = [datetime.fromisoformat(entry["time"]) for entry in accept_failures]
    flood_seconds = (moments[-1] - moments[0]).total_seconds()
    assert 1 <= len(accept_failures) <= flood_seconds + 2, (len(accept_failures), flood_seconds)
    held_back = sum(
        int(found.group(1).replace(",", ""))
        for entry in accept_failures
        if (found := re.search(r"\[([\d,]+) more like this", entry["message"]))
    )
    assert held_back > len(accept_failures), held_back
    (forged,) = [entry for entry in entries if "FORGED" in entry.get("path", "")]
    assert forged["path"].startswith("/nope\n2026-11-29")
    assert forged["status"] == 404


def test_a_body_nested_too_deep_is_a_400_and_no_traceback(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    ignored = server.client.post(
        "/generate",
        content=f'{{"prompt": "Hi", "max_length": 1, "ignored": {deep}}}',
        headers={"Content-Type": "application/json"},
    )
    assert ignored.status_code == 400
    assert "128 levels" in ignored.json()["detail"]
    schema: dict[str, object] = {"type": "string"}
    for _ in range(900):
        schema = {"type": "array", "items": schema}
    response_format = {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}
    nested_schema = server.client.post(
        "/v1/chat/completions",
        json={
            "model": DEFAULT_ID,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1,
            "response_format": response_format,
        },
    )
    assert nested_schema.status_code == 400
    assert nested_schema.json()["error"]["type"] == "invalid_request_error"
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_client_that_gives_up_is_counted_as_a_disconnect_not_a_500(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="locallab_gguf.access")
    # End-of-generation banned: the answer runs to its 500 tokens, long after the client left.
    body = {
        "model": DEFAULT_ID,
        "prompt": "Once upon a time",
        "max_tokens": 500,
        "logit_bias": {"0": -100, "1": -100, "2": -100},
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=0.5)

    def counted() -> bool:
        metrics = server.client.get("/metrics").text
        return 'route="/v1/completions",status="499"' in metrics

    wait_until(counted, timeout=60)
    metrics = server.client.get("/metrics").text
    assert 'route="/v1/completions",status="500"' not in metrics
    server.wait_until_idle(timeout=60)  # the generation was stopped, not left to run
    access = [
        record.getMessage() for record in caplog.records if "/v1/completions" in record.getMessage()
    ]
    assert any("status=499" in line for line in access), access


def test_loading_the_loaded_model_answers_200_while_another_load_runs(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    gate = threading.Event()
    real_open = local_engine_opener(TEST_SETTINGS)

    async def gated_open(spec: ModelSpec, path: Path) -> EngineClient:
        if spec.id != DEFAULT_ID:
            await asyncio.to_thread(gate.wait, 60)  # the twin loads only when the test says
        return await real_open(spec, path)

    server = make_server(registry_=two_model_registry(tmp_path), opener=gated_open)
    switching: list[httpx.Response] = []
    loader = threading.Thread(
        target=lambda: switching.append(
            httpx.post(f"{server.url}/models/load", json={"model_id": "smollm2-twin"}, timeout=120)
        )
    )
    loader.start()
    try:
        wait_until(lambda: server.client.get("/health").json()["model_status"] == "loading")
        again = server.client.post("/models/load", json={"model_id": DEFAULT_ID})
        assert again.status_code == 200
        assert again.json()["status"] == "success"
        assert again.json()["model"]["id"] == DEFAULT_ID
        other = server.client.post("/models/load", json={"model_id": "wrong-checksum"})
        assert other.status_code == 409
    finally:
        gate.set()
        loader.join()
    assert switching[0].status_code == 200


def _record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("asyncio", level, __file__, 1, message, None, None)


def test_a_repeated_error_is_written_once_per_interval_with_the_count_left_out() -> None:
    now = [0.0]
    repeats = RepeatFilter(10.0, clock=lambda: now[0])
    assert repeats.filter(_record("socket.accept() out of system resource"))
    for _ in range(5):
        now[0] += 1
        assert not repeats.filter(_record("socket.accept() out of system resource"))
    assert repeats.filter(_record("another error"))  # each message has its own interval
    assert repeats.filter(_record("access line", logging.INFO))  # info lines are never held
    assert repeats.filter(_record("access line", logging.INFO))
    now[0] = 12.0
    again = _record("socket.accept() out of system resource")
    assert repeats.filter(again)
    assert again.getMessage() == (
        "socket.accept() out of system resource [5 more like this in the 12 s before, not logged]"
    )


def test_text_log_lines_escape_what_could_forge_a_line() -> None:
    record = _record("path=%s", logging.INFO)
    record.args = ("/nope\n" + FORGED + "\x1b[31m\x00\u202e",)
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert line.endswith("path=/nope\\n" + FORGED + "\\x1b[31m\\x00\\u202e")
