"""`--ctx auto`: the longest context per slot, up to the model's trained length, that the memory
plan holds for the configured slots and KV cache type.

Every slot keeps a stream of its own (the per-slot KV layout), so each slot gets the whole
context, and the cache of all slots is allocated, and written, at load. The plan therefore
sizes the context to the memory there is now: the RAM available less the system's reserve and
what the prompt caches are promised, and, with layers on an NVIDIA GPU, as many layers as at
the floor. Where even the floor does not fit, the floor is planned and the plan refuses the
load with its sizes, as with a fixed --ctx. docs/performance.md has the measurements behind
the layout and the choice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from locallab_gguf.engine.types import EngineConfig
from locallab_gguf.models.registry import GpuLayers
from locallab_gguf.placement.hardware import HardwareInfo
from locallab_gguf.placement.memory import KV_CELL_QUANTUM, KvCache, ModelMemory
from locallab_gguf.placement.offload import (
    RAM_RESERVE_BYTES,
    OffloadPlan,
    fits_gpus,
    gpu_layers_request,
    kv_cache_of,
    plan_offload,
    read_model_memory,
)
from locallab_gguf.sizes import human_bytes


def plan_load(
    model_or_path: ModelMemory | Path,
    hardware: HardwareInfo,
    config: EngineConfig,
    *,
    setting: GpuLayers | None,
    registry: GpuLayers,
    ram_promised_bytes: int = 0,
    ram_withheld_bytes: int = 0,
) -> OffloadPlan:
    """The plan of a load of the model at a path (or of the facts of its header, read from the
    hub before it is downloaded) with `config`: GPU layers, memory and, for an auto context
    (config.n_ctx None), the context per slot and why.

    `ram_promised_bytes` is free RAM that is promised already (the prompt caches' budget they
    do not hold yet); `ram_withheld_bytes` is taken off the machine's total that the resident
    models share (the caches' whole budget)."""
    model = read_model_memory(model_or_path) if isinstance(model_or_path, Path) else model_or_path
    requested, decided_by = gpu_layers_request(setting, registry)

    def plan_for(kv: KvCache) -> OffloadPlan:
        planned = plan_offload(model, hardware, kv=kv, requested=requested, decided_by=decided_by)
        total = planned.ram_total_bytes
        return msgspec.structs.replace(
            planned,
            ram_promised_bytes=ram_promised_bytes,
            ram_total_bytes=max(0, total - ram_withheld_bytes) if total else 0,
        )

    at_floor = kv_cache_of(config, model)
    if config.n_ctx is not None or config.embedding is not None:
        return plan_for(at_floor)
    return _largest_context(model, hardware, at_floor, plan_for)


def _largest_context(
    model: ModelMemory,
    hardware: HardwareInfo,
    at_floor: KvCache,
    plan_for: Callable[[KvCache], OffloadPlan],
) -> OffloadPlan:
    floor = at_floor.context_per_slot
    trained = max(model.n_ctx_train, floor)
    floor_plan = plan_for(at_floor)
    gpus = hardware.offload_gpus
    gpu_layers = floor_plan.estimate.gpu_layers

    def holds(context: int) -> OffloadPlan | None:
        planned = floor_plan if context == floor else plan_for(at_floor.with_context(context))
        estimate = planned.estimate
        within_total = (
            not planned.ram_total_bytes
            or estimate.ram_bytes + RAM_RESERVE_BYTES <= planned.ram_total_bytes
        )
        keeps_gpu_layers = (
            not gpu_layers
            or hardware.backend != "cuda"
            or (
                estimate.gpu_layers >= gpu_layers
                and fits_gpus(model, gpu_layers, gpus, at_floor.with_context(context))
            )
        )
        return planned if planned.fits and within_total and keeps_gpu_layers else None

    kv_types = f"{at_floor.type_k.value} K / {at_floor.type_v.value} V"
    whole = holds(trained)
    if whole is not None:
        return _with_reason(
            whole,
            f"auto: the model's trained context, which memory holds for all "
            f"{at_floor.parallel} slots ({human_bytes(whole.estimate.kv_cache_bytes)} of "
            f"{kv_types} cache)",
        )
    if floor >= trained or holds(floor) is None:
        return _with_reason(
            floor_plan,
            f"auto: the floor (--ctx-floor); memory does not hold even that for "
            f"{at_floor.parallel} slots of {kv_types} cache",
        )
    # The plan grows with the context, so the contexts that fit are a prefix: bisect over
    # whole multiples of llama.cpp's cell quantum above the floor.
    above = (floor // KV_CELL_QUANTUM + 1) * KV_CELL_QUANTUM
    steps = [floor, *range(above, trained, KV_CELL_QUANTUM)]
    low, high = 0, len(steps) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if holds(steps[middle]) is not None:
            low = middle
        else:
            high = middle - 1
    chosen = holds(steps[low])
    assert chosen is not None  # the floor holds
    return _with_reason(
        chosen,
        f"auto: the most memory holds for {at_floor.parallel} slots "
        f"({human_bytes(chosen.estimate.kv_cache_bytes)} of {kv_types} cache); the model "
        f"was trained for {trained:,}: fewer --parallel slots or a quantized KV cache give "
        "each slot more",
    )


def _with_reason(plan: OffloadPlan, reason: str) -> OffloadPlan:
    return msgspec.structs.replace(plan, context_reason=reason)
