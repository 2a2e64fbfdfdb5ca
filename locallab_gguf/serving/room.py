"""Whether a model can be loaded beside the resident ones, and which to unload to make room.

A load needs a place under --max-models and its estimated RAM (weights, KV cache for its
slots, compute buffers) below the available memory, less a reserve for the system; and the
estimates of all resident models together must stay below the machine's RAM, less the
reserve (the kernel counts a model's memory-mapped weights as available, though unloading
it is what would really free them). Idle
models are unloaded to make room, least recently used first, those loaded on demand before
pinned ones (the start-up, preload and default models). A model busy with requests is never
unloaded: when only its room would do, the load waits for it; when even unloading every
model would not do, the model can never fit.

On an NVIDIA GPU the same idle models also give way for VRAM: when unloading them would let
more of the new model's layers run on the GPU, the fewest of them that give it as many layers
as unloading all of them would are unloaded too. Busy models are not waited for on that
account: a model that fits in RAM loads with the layers that fit, rather than not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Protocol

from locallab_gguf.errors import (
    HubAccessDenied,
    HubError,
    HubNotFound,
    LocalLabError,
    ModelUnavailable,
    NoRoomForModel,
)
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.hub_access import HubAccess
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.placement.offload import RAM_RESERVE_BYTES, OffloadPlan, ensure_fits
from locallab_gguf.placement.plan_text import plan_summary
from locallab_gguf.serving.resident import ResidentModel
from locallab_gguf.sizes import human_bytes

log = logging.getLogger(__name__)


class Planner(Protocol):
    """Plans a model's memory on this machine before it loads (loader.LocalPlanner)."""

    def plan(self, spec: ModelSpec, path: Path) -> OffloadPlan: ...

    def gpu_layers_after(self, spec: ModelSpec, path: Path) -> Callable[[int], int] | None:
        """Layers of `spec` that would fit the GPUs with a given number of bytes of VRAM freed
        (None: no GPU takes layers here)."""
        ...

    def plan_hub_file(self, spec: ModelSpec, access: HubAccess) -> OffloadPlan:
        """The plan of a file not yet downloaded, from its header on the hub."""
        ...


class RoomOutcome(enum.Enum):
    FITS = "fits"  # after unloading `unload` (possibly none)
    WAIT = "wait"  # models busy with requests hold the room it needs
    NEVER = "never"  # more memory than the machine has free with every model unloaded


# Layers of the new model that fit the GPUs, given the bytes of VRAM unloading would free.
GpuLayersAfter = Callable[[int], int]


class Room:
    def __init__(self, outcome: RoomOutcome, unload: list[ResidentModel], reason: str) -> None:
        self.outcome = outcome
        self.unload = unload
        self.reason = reason  # why it waits; with FITS, what unloading buys beyond the room


def find_room(
    resident: Iterable[ResidentModel],
    plan: OffloadPlan | None,
    max_models: int | None,
    gpu_layers_after: GpuLayersAfter | None = None,
) -> Room:
    """Which models to unload so that a model planned as `plan` fits (None: memory unknown,
    only the count is judged), and, with `gpu_layers_after`, gets the most GPU layers that
    unloading idle models can give it."""
    models = list(resident)
    idle = sorted((model for model in models if model.idle), key=lambda m: (m.pinned, m.last_used))
    gpu_goal = _gpu_goal(idle, gpu_layers_after)
    chosen = _unload_until_fits(idle, models, plan, max_models, gpu_goal)
    if chosen is not None:
        return Room(RoomOutcome.FITS, chosen, gpu_goal.why(chosen) if gpu_goal else "")
    if _unload_until_fits(models, models, plan, max_models) is None:
        return Room(RoomOutcome.NEVER, [], "")
    busy = ", ".join(f"{m.spec.id!r} ({m.in_flight} in flight)" for m in models if not m.idle)
    if plan is not None and not _fits_memory(plan, idle, models):
        why = f"it needs about {human_bytes(plan.estimate.ram_bytes)} of RAM"
    else:
        why = f"{len(models)} of --max-models {max_models} are loaded"
    return Room(RoomOutcome.WAIT, [], f"{why}, and only unloading {busy} would make room")


async def make_room(
    spec: ModelSpec,
    path: Path,
    *,
    resident: Callable[[], list[ResidentModel]],
    planner: Planner | None,
    max_models: int | None,
    wait_seconds: float,
    unload: Callable[[ResidentModel], Awaitable[object]],
    room_changed: asyncio.Event,
) -> OffloadPlan | None:
    """Unload idle models until `spec` fits; wait (at most `wait_seconds`) while busy ones
    hold the room, waking when `room_changed` is set; raise when it never can fit."""
    plan = None
    gpu_layers_after = None
    if planner is not None:
        plan = await asyncio.to_thread(planner.plan, spec, path)
        gpu_layers_after = await asyncio.to_thread(planner.gpu_layers_after, spec, path)
    deadline = time.monotonic() + wait_seconds
    while True:
        models = resident()
        room = find_room(models, plan, max_models, gpu_layers_after)
        if room.outcome is RoomOutcome.FITS:
            for model in room.unload:
                log.info(
                    "unloading idle model %s to make room for %s%s",
                    model.spec.id,
                    spec.id,
                    room.reason,
                )
                await unload(model)
            if room.unload and planner is not None:
                # What the unloaded models held is free now: the engine is planned on that.
                plan = await asyncio.to_thread(planner.plan, spec, path)
            return plan
        if room.outcome is RoomOutcome.NEVER:
            assert plan is not None  # without a plan only the count is judged
            _refuse(spec, plan, models)
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoRoomForModel(spec.id, room.reason)
        log.info("loading %s waits for room: %s", spec.id, room.reason)
        room_changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(room_changed.wait(), left)


def _refuse(spec: ModelSpec, plan: OffloadPlan, models: list[ResidentModel]) -> None:
    """ModelTooLarge with the sizes, for a model that never fits. The whole budget: what is
    free now and what every other model holds, within the machine's RAM."""
    budget = plan.ram_available_bytes + sum(m.ram_bytes for m in models)
    if plan.ram_total_bytes:
        budget = min(budget, plan.ram_total_bytes)
    ensure_fits(spec.id, plan, other_models_bytes=max(0, budget - plan.ram_available_bytes))


async def judge_before_download(
    spec: ModelSpec,
    files: ModelFiles,
    planner: Planner | None,
    resident: list[ResidentModel],
    max_models: int | None,
) -> OffloadPlan | None:
    """For a model whose file is not here: its plan from its header on the hub, refused
    (ModelTooLarge, as after a download) when it could never fit, before a byte of its weights
    is downloaded. None when there is nothing to judge, or the header cannot be read (then
    the model is judged after its download, as before)."""
    if planner is None or files.access.offline:
        return None
    if await asyncio.to_thread(files.local_path, spec) is not None:
        return None
    try:
        plan = await asyncio.to_thread(planner.plan_hub_file, spec, files.access)
    except (HubNotFound, HubAccessDenied):
        raise  # the download would fail the same way: say it now
    except (HubError, ModelUnavailable) as exc:  # no ranges there, or a header of no model
        log.warning(
            "cannot plan %s before downloading it (%s); it is planned once here", spec.id, exc
        )
        return None
    log.info("model %s, planned before downloading: %s", spec.id, plan_summary(plan))
    if find_room(resident, plan, max_models).outcome is RoomOutcome.NEVER:
        _refuse(spec, plan, resident)
    return plan


def planned_context(planner: Planner | None, spec: ModelSpec, path: Path) -> int | None:
    """The context per slot a load of `spec` would get now (--ctx auto: what memory
    holds); None when it cannot be planned (no planner, a worker away). Blocking."""
    if planner is None:
        return None
    try:
        return planner.plan(spec, path).estimate.context_per_slot
    except LocalLabError:
        return None


class _GpuGoal:
    """The GPU layers unloading every idle model would give the new model, which the chosen
    models must reach."""

    def __init__(self, layers_after: GpuLayersAfter, layers_now: int, goal: int) -> None:
        self.layers_after = layers_after
        self.layers_now = layers_now
        self.goal = goal

    def reached(self, unloaded: list[ResidentModel]) -> bool:
        return self.layers_after(sum(model.vram_bytes for model in unloaded)) >= self.goal

    def why(self, unloaded: list[ResidentModel]) -> str:
        if not any(model.vram_bytes for model in unloaded):
            return ""
        return (
            f" (freeing VRAM: {self.goal} of its layers fit the GPU then, "
            f"{self.layers_now} without unloading)"
        )


def _gpu_goal(idle: list[ResidentModel], layers_after: GpuLayersAfter | None) -> _GpuGoal | None:
    if layers_after is None or not any(model.vram_bytes for model in idle):
        return None
    now = layers_after(0)
    goal = layers_after(sum(model.vram_bytes for model in idle))
    return _GpuGoal(layers_after, now, goal) if goal > now else None


def _unload_until_fits(
    candidates: list[ResidentModel],
    resident: list[ResidentModel],
    plan: OffloadPlan | None,
    max_models: int | None,
    gpu_goal: _GpuGoal | None = None,
) -> list[ResidentModel] | None:
    """The fewest of `candidates`, taken in order, whose unloading makes room (and reaches
    the GPU goal); None if even all of them would not."""
    for taken in range(len(candidates) + 1):
        chosen = candidates[:taken]
        under_count = max_models is None or len(resident) - taken < max_models
        if (
            under_count
            and (plan is None or _fits_memory(plan, chosen, resident))
            and (gpu_goal is None or gpu_goal.reached(chosen))
        ):
            return chosen
    return None


def _fits_memory(
    plan: OffloadPlan, unloaded: list[ResidentModel], resident: list[ResidentModel]
) -> bool:
    freed = sum(model.ram_bytes for model in unloaded)
    staying = sum(model.ram_bytes for model in resident) - freed
    # The total has the prompt caches' whole budget taken off already; what is free now must
    # also leave them the part they do not hold yet.
    own = plan.estimate.ram_bytes + RAM_RESERVE_BYTES
    within_total = not plan.ram_total_bytes or own + staying <= plan.ram_total_bytes
    return plan.ram_needed_bytes <= plan.ram_available_bytes + freed and within_total
