"""open_engine: a model's engine in a worker process or on a thread, as configured."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from locallab_gguf.engine.client import EngineClient
from locallab_gguf.engine.types import EngineConfig
from locallab_gguf.engine.worker.process_runner import WorkerEngine, WorkerSpec


async def open_engine(
    path: Path,
    config: EngineConfig,
    n_gpu_layers: int,
    isolation: Literal["process", "thread"],
    log_level: str = "info",
    log_format: str = "text",
) -> EngineClient:
    """Start an engine for the model at `path`, in a worker process or on a thread."""
    if isolation == "thread" and config.embedding is not None:
        from locallab_gguf.engine.encode.embedding_runner import open_local_embedding_engine

        return await open_local_embedding_engine(path, config, config.embedding, n_gpu_layers)
    if isolation == "thread":
        # Imported here: only thread mode loads llama.cpp into this process.
        from locallab_gguf.engine.worker.thread_runner import open_local_engine

        return await open_local_engine(path, config, n_gpu_layers)
    spec = WorkerSpec(
        model_path=str(path),
        config=config,
        n_gpu_layers=n_gpu_layers,
        log_level=log_level,
        log_format=log_format,
    )
    return await WorkerEngine.start(spec)
