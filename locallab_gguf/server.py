"""Settings -> registry, model manager, app and a running uvicorn server."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import uvicorn
from litestar import Litestar

from locallab_gguf.api.app import create_app
from locallab_gguf.engine import EngineClient, EngineConfig, open_engine, supports_gpu_offload
from locallab_gguf.hardware import HardwareInfo, HardwareProbe, choose_threads
from locallab_gguf.hub import ModelFiles, hub_access
from locallab_gguf.model_manager import EngineOpener, ModelManager
from locallab_gguf.offload import OffloadPlan, ensure_fits, plan_model_file
from locallab_gguf.registry import ModelSpec, Registry, load_registry_file
from locallab_gguf.settings import Settings
from locallab_gguf.sizes import human_bytes

log = logging.getLogger(__name__)


def load_settings_registry(settings: Settings) -> Registry:
    return load_registry_file(settings.models_file)


def engine_config(settings: Settings, spec: ModelSpec) -> EngineConfig:
    threads = choose_threads(settings.threads, settings.threads_batch)
    return EngineConfig(
        n_ctx=settings.ctx,
        n_parallel=settings.parallel,
        n_threads=threads.generation,
        n_threads_batch=threads.batch,
        queue_size=settings.queue_size,
        chat_template=spec.chat_template,
    )


def offload_plan(
    settings: Settings, spec: ModelSpec, path: Path, hardware: HardwareInfo
) -> OffloadPlan:
    """GPU layers for `spec` on this hardware: --gpu-layers, else the registry's, else auto."""
    return plan_model_file(
        path,
        hardware,
        engine_config(settings, spec),
        setting=settings.gpu_layers,
        registry=spec.n_gpu_layers,
    )


def local_engine_opener(settings: Settings, probe: HardwareProbe | None = None) -> EngineOpener:
    """Plan the offload, refuse a model that cannot fit (ModelTooLarge), then load it.

    `probe` reads GPUs and memory; tests pass one with simulated readings.
    """
    hardware_probe = probe or HardwareProbe(supports_gpu_offload())

    async def open_planned(spec: ModelSpec, path: Path) -> EngineClient:
        def plan() -> OffloadPlan:
            return offload_plan(settings, spec, path, hardware_probe.read())

        planned = await asyncio.to_thread(plan)
        log_offload_plan(spec.id, planned)
        ensure_fits(spec.id, planned)
        config = engine_config(settings, spec)
        return await open_engine(
            path,
            config,
            planned.estimate.gpu_layers,
            settings.engine_isolation,
            settings.log_level,
            settings.log_format,
        )

    return open_planned


def log_offload_plan(model_id: str, plan: OffloadPlan) -> None:
    estimate = plan.estimate
    log.info(
        "model %s: %d of %d layers on the GPU (%s: %s); estimated VRAM %s, RAM %s",
        model_id,
        estimate.gpu_layers,
        estimate.total_layers,
        estimate.decided_by,
        plan.reason,
        human_bytes(estimate.vram_bytes),
        human_bytes(estimate.ram_bytes),
    )
    if plan.warning:
        log.warning("model %s: %s", model_id, plan.warning)


def build_app(settings: Settings) -> Litestar:
    registry = load_settings_registry(settings)
    # The Hugging Face variables are read here, once; nothing below looks at the environment.
    files = ModelFiles(settings.cache_dir, access=hub_access(settings, os.environ))
    manager = ModelManager(
        registry,
        files,
        local_engine_opener(settings),
        allow_custom_models=settings.custom_models,
    )
    initial = settings.model or registry.default
    manager.spec_for(initial)  # an unknown or refused --model fails now, not once serving
    return create_app(settings, manager, initial_model=initial)


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


def serve(settings: Settings) -> None:
    app = build_app(settings)
    manager: ModelManager = app.state["services"].manager
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
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
