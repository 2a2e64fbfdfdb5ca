"""Real servers for tests: uvicorn on a free loopback port, in a thread of the test process.

Running in-process lets a test look at the engine's own state (slots busy, tokens
evaluated) while it talks to the server over real HTTP.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import uvicorn
from litestar import Litestar

from locallab_gguf.api.services import Services


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(0.005)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    def __init__(self, app: Litestar, port: int, server: uvicorn.Server, thread: threading.Thread):
        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self._server = server
        self._thread = thread
        self.client = httpx.Client(base_url=self.url, timeout=120)

    @property
    def services(self) -> Services:
        services: Services = self.app.state["services"]
        return services

    def engine_stats(self) -> Any:
        current = self.services.manager.current
        assert current is not None, "no model is loaded"
        return current.engine.stats()

    def wait_for_model(self, status: str = "loaded", timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            health: dict[str, Any] = self.client.get("/health").json()
            if health["model_status"] == status:
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"model never reached {status!r}: {health}")
            time.sleep(0.05)

    def wait_until_idle(self, timeout: float) -> float:
        """Seconds until no slot is busy and nothing waits; fails after `timeout`."""
        started = time.monotonic()
        while True:
            stats = self.engine_stats()
            if stats.slots_busy == 0 and stats.queue_depth == 0:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"engine still busy after {timeout} s: {stats}")
            time.sleep(0.005)

    def stop(self) -> None:
        self.client.close()
        self._server.should_exit = True
        self._thread.join(timeout=60)


@contextlib.contextmanager
def serving(app: Litestar, wait_for: str | None = "loaded") -> Iterator[RunningServer]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", proxy_headers=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    running = RunningServer(app, port, server, thread)
    try:
        if wait_for is not None:
            running.wait_for_model(wait_for)
        yield running
    finally:
        running.stop()
