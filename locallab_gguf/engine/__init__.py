"""The only package that imports llama_cpp: model, context, batching, sampling, text."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from locallab_gguf.engine.client import EngineClient, EngineState, LocalEngine, RequestStream
from locallab_gguf.engine.llama import llama_cpp_version, supports_gpu_offload
from locallab_gguf.engine.process_client import WorkerEngine, WorkerSpec
from locallab_gguf.engine.scheduler import EngineConfig, open_batch_engine

__all__ = [
    "EngineClient",
    "EngineConfig",
    "EngineState",
    "LocalEngine",
    "RequestStream",
    "WorkerEngine",
    "llama_cpp_version",
    "open_engine",
    "open_local_engine",
    "supports_gpu_offload",
]


async def open_engine(
    path: Path,
    config: EngineConfig,
    n_gpu_layers: int,
    isolation: Literal["process", "thread"],
    log_level: str = "info",
    log_format: str = "text",
) -> EngineClient:
    """Start an engine for the model at `path`, in a worker process or on a thread."""
    if isolation == "thread":
        return await open_local_engine(path, config, n_gpu_layers)
    spec = WorkerSpec(
        model_path=str(path),
        config=config,
        n_gpu_layers=n_gpu_layers,
        log_level=log_level,
        log_format=log_format,
    )
    return await WorkerEngine.start(spec)


async def open_local_engine(path: Path, config: EngineConfig, n_gpu_layers: int) -> LocalEngine:
    """Load the model and start its engine thread, without blocking the event loop."""
    loop = asyncio.get_running_loop()

    def load() -> LocalEngine:
        return LocalEngine(
            loop, lambda deliver: open_batch_engine(path, n_gpu_layers, config, deliver)
        )

    return await asyncio.to_thread(load)
