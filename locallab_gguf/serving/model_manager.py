"""Which models are resident: loaded when a request names them, unloaded when idle or to
make room, without cutting off requests in flight.

Each resident model runs in an engine of its own (a worker process, unless --engine-isolation
thread). A request names its model, or gets the default one (the start-up model, or the last
one POST /models/load loaded). A model that is not resident is loaded while the request waits:
its file is fetched (downloaded when it is not on this machine), room is made (room.py), and
its engine starts. Loads of one model are shared by every request waiting for it; loads of
different models run one after another, so that each judges the room the others left.

Requests hold their model while they run (`use`, `hold`); a model's keep-alive starts when
the last one lets go. A load runs as a task of its own, so a client may wait for it or only
watch it (GET /models/status/{id}).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec

from locallab_gguf.durations import FOREVER
from locallab_gguf.engine.client import EngineClient
from locallab_gguf.errors import (
    DownloadRefused,
    LoadInProgress,
    LocalLabError,
    ModelLoadFailed,
    ModelLoading,
    ModelNotResident,
    NoModelLoaded,
)
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.ids import is_hub_id, resolve_model_id
from locallab_gguf.models.registry import ModelSpec, Registry
from locallab_gguf.placement.offload import OffloadPlan
from locallab_gguf.serving.default_model import DefaultModel
from locallab_gguf.serving.load_state import LoadProgress, ModelLoadState, ModelStatus, RunningLoad
from locallab_gguf.serving.resident import ResidencyLog, ResidentModel, UnloadReason
from locallab_gguf.serving.room import Planner, judge_before_download, make_room

log = logging.getLogger(__name__)

EngineOpener = Callable[[ModelSpec, Path], Awaitable[EngineClient]]
# A model loaded for a request that never came back for it is unloaded after its keep-alive,
# but not before this many seconds (the request may still be on its way to claim it).
LOAD_GRACE_SECONDS = 10.0


class ResidencyPolicy(msgspec.Struct, frozen=True, kw_only=True):
    max_models: int | None = None  # None: as many as the memory holds
    keep_alive: float = 300.0  # seconds, for models loaded on demand; FOREVER: no limit
    autoload: bool = True
    room_wait: float = 30.0  # seconds a load waits for busy models to make room


class ModelManager:
    def __init__(
        self,
        registry: Registry,
        files: ModelFiles,
        open_engine: EngineOpener,
        *,
        allow_custom_models: bool = True,
        planner: Planner | None = None,
        policy: ResidencyPolicy | None = None,
    ) -> None:
        """`planner` judges memory before each load (None: only --max-models limits)."""
        self.registry = registry
        self.files = files
        self.allow_custom_models = allow_custom_models
        self.policy = policy or ResidencyPolicy()
        self.history = ResidencyLog()
        self.default = DefaultModel()
        self._open_engine = open_engine
        self._planner = planner
        self._resident: dict[str, ResidentModel] = {}
        self._loads: dict[str, RunningLoad[ResidentModel]] = {}
        self._pin_on_load: set[str] = set()
        self._load_lock = asyncio.Lock()
        self._room_changed = asyncio.Event()
        self._retiring: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Future[None] | None = None

    # -- what is resident --------------------------------------------------------------

    @property
    def planner(self) -> Planner | None:
        return self._planner

    @property
    def resident(self) -> list[ResidentModel]:
        return list(self._resident.values())

    def resident_model(self, model_id: str) -> ResidentModel | None:
        model = self._resident.get(model_id)
        return model if model is not None and model.engine.state != "failed" else None

    @property
    def current(self) -> ResidentModel | None:
        """The default model, when it is resident and serving: none once its engine has
        failed for good (its worker is released at the next load, unload or shutdown)."""
        return self.resident_model(self.default_id) if self.default_id else None

    @property
    def default_id(self) -> str | None:
        return self.default.id

    @property
    def loading(self) -> LoadProgress | None:
        """The load POST /models/load started, while it runs: what LocalLab calls "loading"."""
        return self.default.loading

    @property
    def loading_id(self) -> str | None:
        return self.loading.spec.id if self.loading is not None else None

    @property
    def status(self) -> ModelStatus:
        """The default model's state, as LocalLab's /health reports it."""
        return self.default.status(self._default_resident())

    @property
    def last_error(self) -> str | None:
        """Why the last load failed, or why the default model stopped serving."""
        return self.default.last_error(self._default_resident())

    def _default_resident(self) -> ResidentModel | None:
        """The default model while it is resident, even when its engine has failed."""
        return self._resident.get(self.default_id) if self.default_id else None

    def spec_for(self, model_id: str) -> ModelSpec:
        """The model an id names: a registry id, or a hub file when custom models are allowed
        (`owner/repo:QUANT` lists the repository's files: HTTP, the first time)."""
        return resolve_model_id(
            self.registry,
            model_id,
            allow_custom=self.allow_custom_models,
            pick=self.files.pick_hub_file,
        )

    async def resolve(self, model_id: str) -> ModelSpec:
        """`spec_for`, off the event loop for hub ids, which may ask the hub."""
        if is_hub_id(model_id):
            return await asyncio.to_thread(self.spec_for, model_id)
        return self.spec_for(model_id)

    def state_of(self, model_id: str) -> ModelLoadState:
        spec = self.spec_for(model_id)
        load = self._loads.get(spec.id)
        if load is not None:
            return load.progress.state()
        model = self._resident.get(spec.id)
        if model is not None and model.engine.state != "failed":
            return ModelLoadState(model_id=spec.id, status="loaded")
        if model is not None:
            error = f"model {spec.id!r} failed: {model.engine.failure}"
            return ModelLoadState(model_id=spec.id, status="failed", error=error)
        failure = self.default.error_of(spec.id)
        if failure is not None:
            return ModelLoadState(model_id=spec.id, status="failed", error=failure)
        return ModelLoadState(model_id=spec.id, status="unloaded")

    def loaded(self) -> ResidentModel:
        """The default model; raises ModelLoading while one loads, else NoModelLoaded."""
        current = self.current
        if current is not None:
            return current
        if self.loading is not None:
            raise ModelLoading(self.loading.spec.id)
        raise NoModelLoaded(self.last_error if self.status == "failed" else None)

    # -- the model of a request ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(
        self,
        model_id: str | None,
        keep_alive: float | None = None,
        *,
        refuse_download: str | None = None,
        keep_pins: bool = False,
    ) -> AsyncIterator[ResidentModel]:
        """The model a request names (None: the default model), loaded first if need be,
        and held while the block runs. `keep_alive` (seconds) replaces the model's own from
        now on, as in Ollama: 0 unloads it as soon as nothing uses it; with `keep_pins` it
        leaves a pinned model as it is. `refuse_download` says why this request may not
        make the server download a model (DownloadRefused when the model is not here)."""
        model = await self.model_for(model_id, refuse_download=refuse_download)
        model.claim()
        if keep_alive is not None and not (keep_pins and model.pinned):
            model.keep_alive = keep_alive
        try:
            yield model
        finally:
            self._release(model)

    def hold(self, model: ResidentModel) -> Callable[[], None]:
        """Hold `model` for as long as a stream runs; the callable lets go (once)."""
        model.claim()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release(model)

        return release

    async def model_for(
        self, model_id: str | None, *, refuse_download: str | None = None
    ) -> ResidentModel:
        if model_id is None:
            # Nothing to load, a load under way, or a default model that failed for good
            # (its worker kept crashing): requests do not reload it; POST /models/load does.
            if self.default_id is None or self.loading is not None or self.status == "failed":
                return self.loaded()  # what LocalLab answers when nothing serves
            model_id = self.default_id
        spec = await self.resolve(model_id)  # an unknown id is a 404, before anything else
        model = self.resident_model(spec.id)
        if model is not None:
            return model
        if spec.id not in self._loads and not self.policy.autoload:
            raise ModelNotResident(spec.id)
        # A load already under way was allowed to whoever started it; waiting for it is not a
        # download of one's own.
        if (
            refuse_download is not None
            and spec.id not in self._loads
            and await asyncio.to_thread(self.files.local_path, spec) is None
        ):
            raise DownloadRefused(
                f"the model {spec.id!r} is not on this machine, and loading it would "
                f"download {spec.file} from the hub: {refuse_download}"
            )
        return await asyncio.shield(self._load_task(spec, pin=False))

    def _release(self, model: ResidentModel) -> None:
        model.release()
        if model.idle:
            self._room_changed.set()
            if self._resident.get(model.spec.id) is model:
                model.schedule_expiry(model.keep_alive, self._expire)

    def _expire(self, model: ResidentModel) -> None:
        if self._resident.get(model.spec.id) is model and model.idle:
            log.info("model %s has been idle for its keep-alive; unloading it", model.spec.id)
            self._retire(model, "keep_alive")

    # -- loading -------------------------------------------------------------------------

    def start_load(self, model_id: str) -> asyncio.Future[ResidentModel]:
        """POST /models/load: make a model resident and the default; the future is done once
        it serves, or failed.

        Raises at once, before anything starts, for an unknown id or another such load.
        """
        spec = self.spec_for(model_id)
        # A model that already serves needs nothing, even while another load runs.
        model = self.resident_model(spec.id)
        if model is not None:
            self._make_default(model)
            loaded: asyncio.Future[ResidentModel] = asyncio.get_running_loop().create_future()
            loaded.set_result(model)
            return loaded
        # One /models/load at a time, as LocalLab's clients expect (409 while one runs);
        # requests that name a model still wait for its load through model_for.
        if self.loading is not None:
            raise LoadInProgress(
                f"model {self.loading.spec.id!r} is being loaded; wait for it to finish "
                f"(GET /models/status/{self.loading.spec.id}), then retry"
            )
        task = self._load_task(spec, pin=True)
        self.default.loading = self._loads[spec.id].progress

        def settled(done: asyncio.Task[ResidentModel]) -> None:
            if self.loading is not None and self.loading.spec.id == spec.id:
                self.default.loading = None
            failed = done.cancelled() or done.exception() is not None
            if failed:
                self.default.failed = self.current is None
            else:
                self._make_default(done.result())

        task.add_done_callback(settled)
        return task

    async def load(self, model_id: str) -> ResidentModel:
        # Shielded: a client that hangs up does not stop a load that others may be watching.
        return await asyncio.shield(self.start_load(model_id))

    async def preload(self, model_id: str) -> ResidentModel:
        """Load a model to keep (models.toml's `preload`), without making it the default."""
        spec = self.spec_for(model_id)
        model = self.resident_model(spec.id)
        if model is None:
            model = await asyncio.shield(self._load_task(spec, pin=True))
        self._pin(model)
        return model

    def _make_default(self, model: ResidentModel) -> None:
        previous = self.current
        self.default.make(model.spec.id)
        self._pin(model)
        if (
            previous is not None
            and previous is not model
            and previous.spec.id not in self._preloaded
        ):
            # No longer the default: it stays as long as a model loaded on demand would.
            previous.pinned = False
            previous.keep_alive = self._keep_alive_of(previous.spec)
            if previous.idle:
                previous.schedule_expiry(previous.keep_alive, self._expire)

    @property
    def _preloaded(self) -> set[str]:
        return {spec_id for spec_id, spec in self.registry.models.items() if spec.preload}

    def _pin(self, model: ResidentModel) -> None:
        model.pinned = True
        model.keep_alive = FOREVER
        model.cancel_expiry()

    def _keep_alive_of(self, spec: ModelSpec) -> float:
        own = spec.keep_alive_seconds
        return own if own is not None else self.policy.keep_alive

    def _load_task(self, spec: ModelSpec, pin: bool) -> asyncio.Task[ResidentModel]:
        """The load of `spec`: the one running, else a new one. `pin`: keep the model
        resident once loaded (no idle unload)."""
        if pin:
            self._pin_on_load.add(spec.id)
        running = self._loads.get(spec.id)
        if running is not None:
            return running.task
        progress = LoadProgress(spec)
        task = asyncio.create_task(self._load(progress), name=f"load {spec.id}")
        self._loads[spec.id] = RunningLoad(progress, task)

        def settled(done: asyncio.Task[ResidentModel]) -> None:
            if self._loads.get(spec.id) is not None and self._loads[spec.id].task is done:
                del self._loads[spec.id]
            # A load nobody waits for (?wait=false) reports its failure through state_of.
            if not done.cancelled():
                done.exception()

        task.add_done_callback(settled)
        return task

    async def _load(self, progress: LoadProgress) -> ResidentModel:
        spec = progress.spec
        started = time.monotonic()
        try:
            progress.plan = await judge_before_download(
                spec, self.files, self._planner, self.resident, self.policy.max_models
            )
            path = await asyncio.to_thread(self.files.fetch, spec, progress.on_bytes)
            progress.phase = "loading"
            async with self._load_lock:
                plan = await self._make_room(spec, path)
                engine = await self._open_engine(spec, path)
        except LocalLabError as exc:
            self._load_failed(spec, str(exc))
            raise
        except Exception as exc:
            # What went wrong is in the log: an unforeseen error's text may name server paths.
            log.exception("loading %s failed", spec.id)
            reason = f"{type(exc).__name__}; the server log has the details"
            self._load_failed(spec, reason)
            raise ModelLoadFailed(f"loading model {spec.id!r} failed: {reason}") from exc
        pinned = spec.id in self._pin_on_load
        self._pin_on_load.discard(spec.id)
        seconds = time.monotonic() - started
        model = ResidentModel(
            spec,
            path,
            engine,
            seconds,
            estimate=plan.estimate if plan is not None else None,
            keep_alive=FOREVER if pinned else self._keep_alive_of(spec),
            pinned=pinned,
        )
        self._resident[spec.id] = model
        self.default.load_succeeded(spec.id)
        self.history.loaded(spec.id, seconds)
        log.info("model %s loaded from %s in %.1f s", spec.id, path, seconds)
        model.schedule_expiry(max(model.keep_alive, LOAD_GRACE_SECONDS), self._expire)
        return model

    async def _make_room(self, spec: ModelSpec, path: Path) -> OffloadPlan | None:
        self._drop_failed()
        return await make_room(
            spec,
            path,
            resident=lambda: list(self._resident.values()),
            planner=self._planner,
            max_models=self.policy.max_models,
            wait_seconds=self.policy.room_wait,
            unload=lambda model: self._retire(model, "make_room").wait(),
            room_changed=self._room_changed,
        )

    def _drop_failed(self) -> None:
        for model in list(self._resident.values()):
            if model.engine.state == "failed":
                self._retire(model, "engine_failed")

    def _load_failed(self, spec: ModelSpec, reason: str) -> None:
        self._pin_on_load.discard(spec.id)
        error = self.default.load_failed(spec.id, reason)
        self.history.load_failed(spec.id)
        log.error("%s", error)

    # -- unloading -----------------------------------------------------------------------

    async def unload(self, model_id: str | None = None) -> ResidentModel | None:
        """POST /models/unload: the default model (None), or the one named. Requests in
        flight on it finish first. Returns the model, or None when it was not resident."""
        if model_id is None:
            if self.loading is not None:
                raise LoadInProgress(
                    f"model {self.loading.spec.id!r} is being loaded; wait for it to finish, "
                    "then retry"
                )
            target_id = self.default_id
        else:
            target_id = self.spec_for(model_id).id
        if target_id is None:
            return None
        if target_id == self.default_id:
            self.default.clear()
        model = self._resident.get(target_id)
        if model is None:
            return None
        self._retire(model, "unload_request")
        return model if model.engine.state != "failed" else None

    def _retire(self, model: ResidentModel, reason: UnloadReason) -> asyncio.Event:
        """Take `model` out of the resident set; its engine finishes what it has, then its
        worker exits. The event is set once it has."""
        model.cancel_expiry()
        if self._resident.get(model.spec.id) is model:
            del self._resident[model.spec.id]
        self.history.unloaded(model.spec.id, reason)
        self._room_changed.set()
        stopped = asyncio.Event()

        async def drain() -> None:
            try:
                await model.engine.close(drain=True)
                log.info("model %s unloaded (%s)", model.spec.id, reason)
            finally:
                stopped.set()

        task = asyncio.create_task(drain())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return stopped

    async def close_after(self, grace_seconds: float) -> None:
        """On shutdown: requests in flight get `grace_seconds` to finish, then are stopped."""
        await asyncio.sleep(grace_seconds)
        await self.close()

    async def close(self) -> None:
        """Shut down: downloads stop, requests in flight are told the server is stopping.

        Every caller waits for the same shutdown, so the server's own lifespan shutdown does
        not finish (and the process exit) while a grace-period stop is still stopping workers.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        loads = list(self._loads.values())
        for load in loads:
            load.progress.cancel()
            load.task.cancel()
        await asyncio.gather(*(load.task for load in loads), return_exceptions=True)
        models, self._resident = list(self._resident.values()), {}
        for model in models:
            model.cancel_expiry()
            self.history.unloaded(model.spec.id, "shutdown")
        await asyncio.gather(
            *(model.engine.close(drain=False) for model in models), return_exceptions=True
        )
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
