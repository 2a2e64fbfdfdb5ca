"""The only package that imports llama_cpp: model, context, batching, sampling, text."""

from __future__ import annotations

import asyncio
from pathlib import Path

from locallab_gguf.engine.client import EngineClient, LocalEngine, RequestStream
from locallab_gguf.engine.llama import LlamaModel, llama_cpp_version, supports_gpu_offload
from locallab_gguf.engine.scheduler import BatchEngine, EngineConfig

__all__ = [
    "EngineClient",
    "EngineConfig",
    "LocalEngine",
    "RequestStream",
    "llama_cpp_version",
    "open_local_engine",
    "supports_gpu_offload",
]


async def open_local_engine(path: Path, config: EngineConfig, n_gpu_layers: int) -> LocalEngine:
    """Load the model and start its engine thread, without blocking the event loop."""
    loop = asyncio.get_running_loop()

    def load() -> LocalEngine:
        model = LlamaModel(path, n_gpu_layers=n_gpu_layers)
        try:
            return LocalEngine(loop, lambda deliver: BatchEngine(model, config, deliver))
        except BaseException:
            model.close()
            raise

    return await asyncio.to_thread(load)
