"""Settings -> registry, model manager, app and a running uvicorn server."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn
from litestar import Litestar

from locallab_gguf.api.app import create_app
from locallab_gguf.engine import EngineClient, EngineConfig, open_local_engine, supports_gpu_offload
from locallab_gguf.hardware import logical_cores, physical_cores
from locallab_gguf.hub import ModelFiles
from locallab_gguf.model_manager import EngineOpener, ModelManager
from locallab_gguf.registry import ModelSpec, Registry, default_models_file, load_registry
from locallab_gguf.settings import Settings

log = logging.getLogger(__name__)


def load_settings_registry(settings: Settings) -> Registry:
    path = Path(settings.models_file) if settings.models_file else default_models_file()
    return load_registry(path)


def engine_config(settings: Settings, spec: ModelSpec) -> EngineConfig:
    return EngineConfig(
        n_ctx=settings.ctx,
        n_parallel=settings.parallel,
        n_threads=settings.threads or physical_cores(),
        n_threads_batch=settings.threads_batch or logical_cores(),
        queue_size=settings.queue_size,
        chat_template=spec.chat_template,
    )


def gpu_layers(spec: ModelSpec) -> int:
    if spec.n_gpu_layers != "auto":
        return spec.n_gpu_layers
    return -1 if supports_gpu_offload() else 0


def local_engine_opener(settings: Settings) -> EngineOpener:
    async def open_engine(spec: ModelSpec, path: Path) -> EngineClient:
        return await open_local_engine(path, engine_config(settings, spec), gpu_layers(spec))

    return open_engine


def build_app(settings: Settings) -> Litestar:
    registry = load_settings_registry(settings)
    initial = settings.model or registry.default
    registry.get(initial)  # an unknown --model fails now, not after the server is up
    manager = ModelManager(registry, ModelFiles(), local_engine_opener(settings))
    return create_app(settings, manager, initial_model=initial)


def serve(settings: Settings) -> None:
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # The client address is ours to judge (trusted proxies); uvicorn must not rewrite it.
        proxy_headers=False,
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run()
