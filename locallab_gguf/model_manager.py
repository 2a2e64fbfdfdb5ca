"""Which model is serving: load, switch and unload, without cutting off requests in flight.

A load resolves the file and starts a new engine while the current one keeps serving; only
when the new engine is ready does it take over. The old engine then stops taking requests,
finishes the ones it has, and frees its memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from locallab_gguf.engine import EngineClient
from locallab_gguf.errors import (
    LoadInProgress,
    LocalLabError,
    ModelLoadFailed,
    ModelNotActive,
    NoModelLoaded,
)
from locallab_gguf.hub import ModelFiles
from locallab_gguf.registry import ModelSpec, Registry

log = logging.getLogger(__name__)

ModelStatus = Literal["loaded", "loading", "unloaded", "failed"]
EngineOpener = Callable[[ModelSpec, Path], Awaitable[EngineClient]]


class ActiveModel:
    def __init__(self, spec: ModelSpec, path: Path, engine: EngineClient, load_seconds: float):
        self.spec = spec
        self.path = path
        self.engine = engine
        self.load_seconds = load_seconds


class ModelManager:
    def __init__(self, registry: Registry, files: ModelFiles, open_engine: EngineOpener) -> None:
        self.registry = registry
        self.files = files
        self._open_engine = open_engine
        self.current: ActiveModel | None = None
        self.loading_id: str | None = None
        self.last_error: str | None = None
        self._failed = False
        self._load_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def status(self) -> ModelStatus:
        if self.loading_id is not None:
            return "loading"
        if self.current is not None:
            return "loaded"
        return "failed" if self._failed else "unloaded"

    def active(self, model_id: str | None = None) -> ActiveModel:
        """The model that serves a request naming `model_id` (None: whichever is loaded)."""
        current = self.current
        if model_id is not None and (current is None or current.spec.id != model_id):
            spec = self.registry.get(model_id)  # an unknown id is a 404, before anything else
            raise ModelNotActive(
                f"model {spec.id!r} is not loaded"
                + (f" ({current.spec.id!r} is)" if current else "")
                + f'; load it first with POST /models/load {{"model_id": "{spec.id}"}}'
            )
        if current is None:
            raise NoModelLoaded()
        return current

    async def load(self, model_id: str) -> ActiveModel:
        spec = self.registry.get(model_id)
        if self._load_lock.locked():
            raise LoadInProgress(
                f"model {self.loading_id!r} is being loaded; wait for it to finish, then retry"
            )
        async with self._load_lock:
            if self.current is not None and self.current.spec.id == spec.id:
                return self.current
            self.loading_id = spec.id
            started = time.monotonic()
            try:
                path = await asyncio.to_thread(self.files.resolve, spec)
                engine = await self._open_engine(spec, path)
            except LocalLabError as exc:
                self._load_failed(spec, str(exc))
                raise
            except Exception as exc:
                log.exception("loading %s failed", spec.id)
                self._load_failed(spec, f"{type(exc).__name__}: {exc}")
                raise ModelLoadFailed(f"loading model {spec.id!r} failed: {exc}") from exc
            finally:
                self.loading_id = None
            loaded = ActiveModel(spec, path, engine, time.monotonic() - started)
            previous, self.current = self.current, loaded
            self._failed = False
            self.last_error = None
            log.info("model %s loaded from %s in %.1f s", spec.id, path, loaded.load_seconds)
            if previous is not None:
                self._retire(previous)
            return loaded

    async def unload(self) -> ActiveModel | None:
        if self._load_lock.locked():
            raise LoadInProgress(
                f"model {self.loading_id!r} is being loaded; wait for it to finish, then retry"
            )
        previous, self.current = self.current, None
        self._failed = False
        if previous is not None:
            self._retire(previous)
        return previous

    async def close(self) -> None:
        """Shut down: requests in flight are told the server is stopping."""
        previous, self.current = self.current, None
        if previous is not None:
            await previous.engine.close(drain=False)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def _load_failed(self, spec: ModelSpec, reason: str) -> None:
        self.last_error = f"loading {spec.id!r} failed: {reason}"
        # A failed switch leaves the previous model serving; "failed" is only for no model.
        self._failed = self.current is None
        log.error("%s", self.last_error)

    def _retire(self, model: ActiveModel) -> None:
        async def drain() -> None:
            await model.engine.close(drain=True)
            log.info("model %s unloaded", model.spec.id)

        task = asyncio.create_task(drain())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
