"""One resident model: its engine, the memory it was planned to take, who is using it, and
when it is due to be unloaded; and the record of every model's loads and unloads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from locallab_gguf.durations import FOREVER
from locallab_gguf.engine.client import EngineClient
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.placement.offload import OffloadEstimate

# Why a model stopped being resident: its keep-alive ran out, its room went to another model,
# a client unloaded it (POST /models/unload, or a request's keep_alive of 0), its engine
# failed for good, or the server stopped.
UnloadReason = Literal["keep_alive", "make_room", "unload_request", "engine_failed", "shutdown"]


class ResidentModel:
    """A loaded model. `in_flight` counts the requests using it: while any is, it is never
    unloaded to make room, and its keep-alive does not run."""

    def __init__(
        self,
        spec: ModelSpec,
        path: Path,
        engine: EngineClient,
        load_seconds: float,
        *,
        estimate: OffloadEstimate | None,
        keep_alive: float,
        pinned: bool,
    ) -> None:
        self.spec = spec
        self.path = path
        self.engine = engine
        self.load_seconds = load_seconds
        self.estimate = estimate  # None when no planner judged it (memory unknown)
        self.keep_alive = keep_alive  # seconds once idle; FOREVER: until unloaded
        self.pinned = pinned  # the start-up, preload or default model: no idle unload
        self.in_flight = 0
        self.loaded_at = time.time()
        self.last_used = self.loaded_at
        self.unload_at: float | None = None  # wall time, while an idle unload is scheduled
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def ram_bytes(self) -> int:
        return self.estimate.ram_bytes if self.estimate is not None else 0

    @property
    def vram_bytes(self) -> int:
        return self.estimate.vram_bytes if self.estimate is not None else 0

    @property
    def idle(self) -> bool:
        return self.in_flight == 0

    def claim(self) -> None:
        self.in_flight += 1
        self.cancel_expiry()

    def release(self) -> None:
        self.in_flight -= 1
        self.last_used = time.time()

    def schedule_expiry(self, seconds: float, expire: Callable[[ResidentModel], None]) -> None:
        """Unload after `seconds` unless claimed before; FOREVER schedules nothing."""
        self.cancel_expiry()
        if seconds == FOREVER:
            return
        self.unload_at = time.time() + seconds
        self._expiry = asyncio.get_running_loop().call_later(seconds, expire, self)

    def cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.unload_at = None


class ModelRecord(msgspec.Struct, kw_only=True):
    """What happened to one model since the server started (for /metrics, /system/info)."""

    loads: int = 0
    load_failures: int = 0
    load_seconds_total: float = 0.0
    last_load_seconds: float | None = None
    unloads: dict[str, int] = msgspec.field(default_factory=dict)  # by UnloadReason


class ResidencyLog:
    def __init__(self) -> None:
        self.models: dict[str, ModelRecord] = {}

    def _of(self, model_id: str) -> ModelRecord:
        return self.models.setdefault(model_id, ModelRecord())

    def loaded(self, model_id: str, seconds: float) -> None:
        record = self._of(model_id)
        record.loads += 1
        record.load_seconds_total += seconds
        record.last_load_seconds = seconds

    def load_failed(self, model_id: str) -> None:
        self._of(model_id).load_failures += 1

    def unloaded(self, model_id: str, reason: UnloadReason) -> None:
        unloads = self._of(model_id).unloads
        unloads[reason] = unloads.get(reason, 0) + 1
