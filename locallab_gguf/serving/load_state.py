"""Where a model's load stands: its phase and byte counts while it runs, and the state one
model reports (GET /models/status/{id})."""

from __future__ import annotations

import asyncio
import threading
from typing import Generic, Literal, TypeVar

import msgspec

from locallab_gguf.errors import LoadCancelled
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.placement.offload import OffloadPlan
from locallab_gguf.placement.plan_text import plan_summary

ModelStatus = Literal["loaded", "loading", "restarting", "unloaded", "failed"]
LoadPhase = Literal["downloading", "loading"]
Loaded = TypeVar("Loaded")


class LoadProgress:
    """A load in flight. The download thread writes the byte counts; the loop reads them."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.phase: LoadPhase = "loading"
        self.downloaded_bytes: int | None = None
        self.total_bytes: int | None = None
        # Planned from the file's header on the hub, before it is downloaded.
        self.plan: OffloadPlan | None = None
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

    def state(self) -> ModelLoadState:
        return ModelLoadState(
            model_id=self.spec.id,
            status=self.phase,
            downloaded_bytes=self.downloaded_bytes,
            total_bytes=self.total_bytes,
            plan=plan_summary(self.plan) if self.plan is not None else None,
        )


class ModelLoadState(msgspec.Struct, kw_only=True):
    """Where one model stands: downloading (with bytes), loading, loaded, unloaded or failed."""

    model_id: str
    status: Literal["downloading", "loading", "loaded", "unloaded", "failed"]
    downloaded_bytes: int | None = None
    total_bytes: int | None = None
    error: str | None = None
    # While a hub model downloads: how it will load, planned from its header on the hub.
    plan: str | None = None


class RunningLoad(Generic[Loaded]):
    """A load under way: its progress, and the task that ends with the loaded model."""

    def __init__(self, progress: LoadProgress, task: asyncio.Task[Loaded]) -> None:
        self.progress = progress
        self.task = task
