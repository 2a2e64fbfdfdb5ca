"""`locallab-gguf serve`: settings -> registry, model manager, app and a running uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from locallab_gguf.api.app import create_app
from locallab_gguf.api.common.services import Services
from locallab_gguf.cli.http_guard import ConnectionLimits, ensure_descriptors, guarded_protocol
from locallab_gguf.engine.runtime.llama import llama_cpp_version, supports_gpu_offload
from locallab_gguf.errors import LocalLabError
from locallab_gguf.models.files import model_files
from locallab_gguf.models.ids import resolve_model_id
from locallab_gguf.placement.hardware import HardwareProbe
from locallab_gguf.serving.loader import (
    LocalPlanner,
    draft_model_file,
    load_settings_registry,
    local_engine_opener,
    residency_policy,
)
from locallab_gguf.serving.model_manager import ModelManager
from locallab_gguf.serving.prompt_cache_budget import PromptCacheBudget
from locallab_gguf.settings import Settings

if TYPE_CHECKING:
    from litestar import Litestar


def build_app(settings: Settings) -> Litestar:
    registry = load_settings_registry(settings)
    # The Hugging Face variables are read here, once; nothing below looks at the environment.
    files = model_files(settings, os.environ, serving=True)
    hardware = HardwareProbe(supports_gpu_offload())
    cache = PromptCacheBudget.of_settings(settings.cache_ram)
    spec_for = functools.partial(
        resolve_model_id, registry, allow_custom=settings.custom_models, pick=files.pick_hub_file
    )
    draft_model = draft_model_file(settings, spec_for, files)
    manager = ModelManager(
        registry,
        files,
        local_engine_opener(settings, hardware, cache, draft_model),
        allow_custom_models=settings.custom_models,
        planner=LocalPlanner(settings, hardware, cache),
        policy=residency_policy(settings),
    )
    initial = settings.model or registry.default
    manager.spec_for(initial)  # an unknown or refused --model fails now, not once serving
    services = Services(
        settings,
        manager,
        hardware,
        initial_model=initial,
        engine_version=llama_cpp_version(),
    )
    return create_app(settings, services)


class DrainingServer(uvicorn.Server):
    """uvicorn that, on Ctrl-C or SIGTERM, stops requests still running after a grace period.

    uvicorn waits for open connections before the app's shutdown runs; a long stream would
    hold it up and then be cut off without a word. Instead, once the grace period is over, the
    engines stop what is in flight, so each stream ends with `[ERROR] the server is stopping`
    and `[DONE]`, and the worker processes exit before the server does.
    """

    def __init__(self, config: uvicorn.Config, manager: ModelManager, grace: float) -> None:
        super().__init__(config)
        self._manager = manager
        self._grace = grace

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stopper = asyncio.create_task(self._manager.close_after(self._grace))
        try:
            await super().shutdown(sockets)
        finally:
            if not stopper.done():
                stopper.cancel()


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_connections=settings.max_connections,
    )


def serve(settings: Settings) -> None:
    app = build_app(settings)
    manager: ModelManager = app.state["services"].manager
    limits = connection_limits(settings)
    ensure_descriptors(limits)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # h11 with read deadlines and a connection cap (uvicorn has neither).
        http=guarded_protocol(limits),
        log_level=settings.log_level,
        # uvicorn's lines go through the process's handlers (--log-format); the access lines
        # are the app's own, which name the client as the rate limit does.
        log_config=None,
        access_log=False,
        # The client address is ours to judge (trusted proxies); uvicorn must not rewrite it.
        proxy_headers=False,
        # A backstop only: DrainingServer ends what is still running after the grace period.
        timeout_graceful_shutdown=round(settings.shutdown_grace) + 10,
    )
    DrainingServer(config, manager, settings.shutdown_grace).run()


class ThreadServer:
    """A uvicorn server running on a thread of this process."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self._server = server
        self._thread = thread

    def stop(self) -> None:
        """Stop serving and wait for the app's shutdown to finish (idempotent)."""
        self._server.should_exit = True
        self._thread.join(timeout=60)


@contextlib.contextmanager
def serve_in_thread(app: Litestar, *, log_level: str = "warning") -> Iterator[ThreadServer]:
    """Serve `app` on a free loopback port in a thread of this process, for the chat command
    and tests; stops the server (and runs the app's shutdown) on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        log_level=log_level,
        lifespan="on",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise LocalLabError("the in-process server did not start; see the messages above")
            time.sleep(0.01)
        running = ThreadServer(server, thread, port)
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
