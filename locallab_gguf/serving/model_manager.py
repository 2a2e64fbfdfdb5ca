"""Which model is serving: load, switch and unload, without cutting off requests in flight.

A load fetches the file (downloading it when it is not on this machine), then starts a new
engine, while the current one keeps serving; only when the new engine is ready does it take
over. The old engine then stops taking requests, finishes the ones it has, and frees its
memory. A load runs as a task of its own, so a client may wait for it or only watch it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import msgspec

from locallab_gguf.engine.client import EngineClient
from locallab_gguf.errors import (
    LoadCancelled,
    LoadInProgress,
    LocalLabError,
    ModelLoadFailed,
    ModelLoading,
    ModelNotActive,
    NoModelLoaded,
)
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.ids import resolve_model_id
from locallab_gguf.models.registry import ModelSpec, Registry

log = logging.getLogger(__name__)

ModelStatus = Literal["loaded", "loading", "restarting", "unloaded", "failed"]
LoadPhase = Literal["downloading", "loading"]
EngineOpener = Callable[[ModelSpec, Path], Awaitable[EngineClient]]


class ModelLoadState(msgspec.Struct, kw_only=True):
    """Where one model stands: downloading (with bytes), loading, loaded, unloaded or failed."""

    model_id: str
    status: Literal["downloading", "loading", "loaded", "unloaded", "failed"]
    downloaded_bytes: int | None = None
    total_bytes: int | None = None
    error: str | None = None


class LoadProgress:
    """The load in flight. The download thread writes the byte counts; the loop reads them."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.phase: LoadPhase = "loading"
        self.downloaded_bytes: int | None = None
        self.total_bytes: int | None = None
        self._cancelled = threading.Event()

    def on_bytes(self, done: int, total: int | None) -> None:
        # Raising here is the only way to stop hf_hub_download between two chunks.
        if self._cancelled.is_set():
            raise LoadCancelled(
                f"the download of {self.spec.id!r} stopped: the server is shutting down"
            )
        self.phase, self.downloaded_bytes, self.total_bytes = "downloading", done, total

    def cancel(self) -> None:
        self._cancelled.set()


class ActiveModel:
    def __init__(self, spec: ModelSpec, path: Path, engine: EngineClient, load_seconds: float):
        self.spec = spec
        self.path = path
        self.engine = engine
        self.load_seconds = load_seconds


class ModelManager:
    def __init__(
        self,
        registry: Registry,
        files: ModelFiles,
        open_engine: EngineOpener,
        *,
        allow_custom_models: bool = True,
    ) -> None:
        self.registry = registry
        self.files = files
        self.allow_custom_models = allow_custom_models
        self._open_engine = open_engine
        self._current: ActiveModel | None = None
        self.loading: LoadProgress | None = None
        self._load_error: str | None = None
        self._failed = False
        self._failed_id: str | None = None
        self._load_task: asyncio.Task[ActiveModel] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Future[None] | None = None

    @property
    def loading_id(self) -> str | None:
        return self.loading.spec.id if self.loading is not None else None

    @property
    def status(self) -> ModelStatus:
        # A download is part of loading: clients that only know "loading" keep working.
        if self.loading is not None:
            return "loading"
        current = self.current
        if current is not None:
            return "restarting" if current.engine.state == "restarting" else "loaded"
        return "failed" if self._failed or self._broken() is not None else "unloaded"

    @property
    def last_error(self) -> str | None:
        """Why the last load failed, or why the loaded model stopped serving."""
        broken = self._broken()
        if broken is not None:
            return f"model {broken.spec.id!r} failed: {broken.engine.failure}"
        return self._load_error

    def spec_for(self, model_id: str) -> ModelSpec:
        """The model an id names: a registry id, or a hub file when custom models are allowed."""
        return resolve_model_id(self.registry, model_id, allow_custom=self.allow_custom_models)

    def state_of(self, model_id: str) -> ModelLoadState:
        spec = self.spec_for(model_id)
        loading, current = self.loading, self.current
        if loading is not None and loading.spec.id == spec.id:
            return ModelLoadState(
                model_id=spec.id,
                status=loading.phase,
                downloaded_bytes=loading.downloaded_bytes,
                total_bytes=loading.total_bytes,
            )
        if current is not None and current.spec.id == spec.id:
            return ModelLoadState(model_id=spec.id, status="loaded")
        broken = self._broken()
        if self._failed_id == spec.id or (broken is not None and broken.spec.id == spec.id):
            return ModelLoadState(model_id=spec.id, status="failed", error=self.last_error)
        return ModelLoadState(model_id=spec.id, status="unloaded")

    def loaded(self) -> ActiveModel:
        """The model that serves; raises ModelLoading while one loads, else NoModelLoaded."""
        current = self.current
        if current is not None:
            return current
        if self.loading is not None:
            raise ModelLoading(self.loading.spec.id)
        raise NoModelLoaded(self.last_error if self.status == "failed" else None)

    def active(self, model_id: str | None = None) -> ActiveModel:
        """The model that serves a request naming `model_id` (None: whichever is loaded),
        where an id is resolved as the registry resolves it (aliases, hub files)."""
        current = self.current
        if model_id is not None and (current is None or current.spec.id != model_id):
            spec = self.spec_for(model_id)  # an unknown id is a 404, before anything else
            if self.loading is not None and self.loading.spec.id == spec.id:
                raise ModelLoading(spec.id)
            if current is None or current.spec.id != spec.id:
                raise ModelNotActive(
                    f"model {spec.id!r} is not loaded"
                    + (f" ({current.spec.id!r} is)" if current else "")
                    + f'; load it first with POST /models/load {{"model_id": "{spec.id}"}}'
                )
        return self.loaded()

    @property
    def current(self) -> ActiveModel | None:
        """The model that serves, if any: none once its engine has failed for good (its
        worker is released at the next load, unload or shutdown)."""
        model = self._current
        if model is None or model.engine.state == "failed":
            return None
        return model

    def _broken(self) -> ActiveModel | None:
        """The loaded model whose engine has failed for good, if that is the case."""
        model = self._current
        return model if model is not None and model.engine.state == "failed" else None

    def start_load(self, model_id: str) -> asyncio.Future[ActiveModel]:
        """Begin loading a model; the future is done once it serves, or failed.

        Raises at once, before anything starts, for an unknown id or a load already running
        (unless the model asked for already serves: then there is nothing to do).
        """
        spec = self.spec_for(model_id)
        if self.current is not None and self.current.spec.id == spec.id:
            loaded: asyncio.Future[ActiveModel] = asyncio.get_running_loop().create_future()
            loaded.set_result(self.current)
            return loaded
        if self.loading is not None:
            raise LoadInProgress(
                f"model {self.loading.spec.id!r} is being loaded; wait for it to finish "
                f"(GET /models/status/{self.loading.spec.id}), then retry"
            )
        progress = LoadProgress(spec)
        self.loading = progress
        task = asyncio.create_task(self._load(progress), name=f"load {spec.id}")
        self._load_task = task
        # A load nobody waits for (?wait=false) reports its failure through state_of.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return task

    async def load(self, model_id: str) -> ActiveModel:
        # Shielded: a client that hangs up does not stop a load that others may be watching.
        return await asyncio.shield(self.start_load(model_id))

    async def _load(self, progress: LoadProgress) -> ActiveModel:
        spec = progress.spec
        started = time.monotonic()
        try:
            path = await asyncio.to_thread(self.files.fetch, spec, progress.on_bytes)
            progress.phase = "loading"
            engine = await self._open_engine(spec, path)
        except LocalLabError as exc:
            self._load_failed(spec, str(exc))
            raise
        except Exception as exc:
            log.exception("loading %s failed", spec.id)
            self._load_failed(spec, f"{type(exc).__name__}: {exc}")
            raise ModelLoadFailed(f"loading model {spec.id!r} failed: {exc}") from exc
        finally:
            self.loading = None
        loaded = ActiveModel(spec, path, engine, time.monotonic() - started)
        previous, self._current = self._current, loaded
        self._failed = False
        self._failed_id = None
        self._load_error = None
        log.info("model %s loaded from %s in %.1f s", spec.id, path, loaded.load_seconds)
        if previous is not None:
            self._retire(previous)
        return loaded

    async def unload(self) -> ActiveModel | None:
        if self.loading is not None:
            raise LoadInProgress(
                f"model {self.loading.spec.id!r} is being loaded; wait for it to finish, then retry"
            )
        previous, self._current = self._current, None
        self._failed = False
        if previous is not None:
            self._retire(previous)
        return previous if previous is not None and previous.engine.state != "failed" else None

    async def close_after(self, grace_seconds: float) -> None:
        """On shutdown: requests in flight get `grace_seconds` to finish, then are stopped."""
        await asyncio.sleep(grace_seconds)
        await self.close()

    async def close(self) -> None:
        """Shut down: a download stops, requests in flight are told the server is stopping.

        Every caller waits for the same shutdown, so the server's own lifespan shutdown does
        not finish (and the process exit) while a grace-period stop is still stopping workers.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self.loading is not None:
            self.loading.cancel()
        task = self._load_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        previous, self._current = self._current, None
        if previous is not None:
            await previous.engine.close(drain=False)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def _load_failed(self, spec: ModelSpec, reason: str) -> None:
        self._load_error = f"loading {spec.id!r} failed: {reason}"
        self._failed_id = spec.id
        # A failed switch leaves the previous model serving; "failed" is only for no model.
        self._failed = self.current is None
        log.error("%s", self._load_error)

    def _retire(self, model: ActiveModel) -> None:
        async def drain() -> None:
            await model.engine.close(drain=True)
            log.info("model %s unloaded", model.spec.id)

        task = asyncio.create_task(drain())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
