"""Real servers for tests: uvicorn on a free loopback port, in a thread of the test process.

Running in-process lets a test look at the engine's own state (slots busy, tokens
evaluated) while it talks to the server over real HTTP.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from litestar import Litestar

from locallab_gguf.api.app import create_app
from locallab_gguf.api.common.services import Services
from locallab_gguf.cli.serve import ThreadServer, serve_in_thread
from locallab_gguf.engine.runtime.llama import llama_cpp_version, supports_gpu_offload
from locallab_gguf.placement.hardware import HardwareProbe
from locallab_gguf.ratelimit import Clock
from locallab_gguf.serving.model_manager import ModelManager
from locallab_gguf.settings import Settings


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(0.005)


def app_of(
    settings: Settings,
    manager: ModelManager,
    initial_model: str | None,
    *,
    clock: Clock = time.time,
    hardware: HardwareProbe | None = None,
) -> Litestar:
    """The app as `serve` builds it, over `manager`; `hardware` simulates GPUs and memory."""
    services = Services(
        settings,
        manager,
        hardware or HardwareProbe(supports_gpu_offload()),
        initial_model=initial_model,
        engine_version=llama_cpp_version(),
    )
    return create_app(settings, services, clock=clock)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    def __init__(self, app: Litestar, running: ThreadServer):
        self.app = app
        self.url = running.url
        self.port = running.port
        self._running = running
        self.client = httpx.Client(base_url=self.url, timeout=120)

    @property
    def services(self) -> Services:
        services: Services = self.app.state["services"]
        return services

    def engine_stats(self, model_id: str | None = None) -> Any:
        """The engine stats of `model_id` (None: the default model)."""
        manager = self.services.manager
        model = manager.current if model_id is None else manager.resident_model(model_id)
        assert model is not None, f"{model_id or 'no default model'} is not loaded"
        return model.engine.stats()

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
        self._running.stop()


@contextlib.contextmanager
def serving(app: Litestar, wait_for: str | None = "loaded") -> Iterator[RunningServer]:
    with serve_in_thread(app) as thread_server:
        running = RunningServer(app, thread_server)
        try:
            if wait_for is not None:
                running.wait_for_model(wait_for)
            yield running
        finally:
            running.stop()
