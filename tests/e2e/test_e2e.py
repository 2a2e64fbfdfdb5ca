"""`locallab-gguf serve` as a user runs it: a subprocess on a free port, then real HTTP."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import DEFAULT_ID, sse_events
from tests.support.reference import Reference
from tests.support.servers import free_port

pytestmark = pytest.mark.slow

CLI = Path(sys.executable).parent / "locallab-gguf"


class Served:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    # A long grace period: a stream running at SIGTERM is to finish, even on a busy machine.
    env = {
        **os.environ,
        "LOCALLAB_CTX": "1024",
        "LOCALLAB_PARALLEL": "2",
        "LOCALLAB_SHUTDOWN_GRACE": "300",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(CLI), "serve", "--port", str(port), "--threads", "2"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    running = Served(url, process, log)
    try:
        _wait_until_loaded(url, process, log)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_serve_answers_the_locallab_api(served: Served, reference: Reference) -> None:
    url = served.url
    health = httpx.get(f"{url}/health").json()
    assert health == {"status": "healthy", "model": DEFAULT_ID, "model_status": "loaded"}
    question = [
        {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
    ]
    chat = httpx.post(
        f"{url}/chat", json={"messages": question, "temperature": 0}, timeout=60
    ).json()
    assert chat["choices"][0]["message"]["content"] == reference.chat(question).text
    current = httpx.get(f"{url}/models/current").json()
    assert current["context_length"] == 1024  # LOCALLAB_CTX reached the engine
    assert current["parallel"] == 2
    schema = httpx.get(f"{url}/schema/openapi.json").json()
    assert {"/generate", "/chat", "/models/load", "/health"} <= set(schema["paths"])


def test_serve_stops_cleanly_on_ctrl_c(served: Served) -> None:
    served.process.send_signal(signal.SIGINT)
    # 130 is the shell's code for a program that ended on Ctrl-C, after a clean shutdown.
    assert served.process.wait(timeout=30) in (0, 130)
    output = served.output()
    assert "Traceback" not in output, output
    assert "Application shutdown complete" in output


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    running = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.NoSuchProcess:
            pass
    return running


def _stream_until_first_piece(url: str, body: dict[str, object]):  # type: ignore[no-untyped-def]
    client = httpx.Client(timeout=120)
    response = client.send(client.build_request("POST", f"{url}/generate", json=body), stream=True)
    lines = response.iter_lines()
    first = next(line for line in lines if line.startswith("data:"))
    return client, response, itertools.chain([first, ""], lines)


def test_sigterm_lets_a_running_stream_finish_and_leaves_no_worker(served: Served) -> None:
    children = psutil.Process(served.process.pid).children(recursive=True)
    assert children, "the engine runs in a worker process"
    body = {"prompt": "Once upon a time", "max_length": 40, "temperature": 0, "stream": True}
    expected = httpx.post(
        f"{served.url}/generate", json={**body, "stream": False}, timeout=60
    ).json()["response"]
    client, response, lines = _stream_until_first_piece(served.url, body)
    served.process.send_signal(signal.SIGTERM)
    events = sse_events(lines)
    response.close()
    client.close()
    assert events[-1] == "[DONE]"
    assert "".join(events[:-1]) == expected
    served.process.wait(timeout=60)
    assert not still_running(children)


def test_sigterm_stops_a_stream_that_outlasts_the_grace_period(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                str(CLI),
                "serve",
                "--port",
                str(port),
                "--ctx",
                "1024",
                "--parallel",
                "2",
                "--shutdown-grace",
                "1",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_loaded(url, process, log)
        children = psutil.Process(process.pid).children(recursive=True)
        body = {"prompt": "Once upon a time", "max_length": 1000, "temperature": 0, "stream": True}
        client, response, lines = _stream_until_first_piece(url, body)
        process.send_signal(signal.SIGTERM)
        events = sse_events(lines)
        response.close()
        client.close()
        assert events[-1] == "[DONE]"
        assert events[-2] == "[ERROR] the server is stopping; the request did not finish"
        # uvicorn ends by re-raising the signal it handled, as supervisors expect.
        assert process.wait(timeout=60) == -signal.SIGTERM
        assert "Application shutdown complete" in log.read_text()
        assert not still_running(children)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_until_loaded(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health").json()["model_status"] == "loaded":
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.1)


def test_unknown_model_flag_fails_at_once_with_the_known_ids() -> None:
    result = subprocess.run(
        [str(CLI), "serve", "--model", "no-such-model", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no-such-model" in result.stderr and DEFAULT_ID in result.stderr
