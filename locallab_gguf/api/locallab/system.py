"""GET /health and GET /system/info."""

from __future__ import annotations

import asyncio
import platform
import time
from typing import Literal

import msgspec
from litestar import get
from litestar.di import NamedDependency

from locallab_gguf import __version__
from locallab_gguf.api.common.middleware.access import PUBLIC, UNLIMITED
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.locallab.models import describe, loaded_rows
from locallab_gguf.api.locallab.wire import (
    Backend,
    CpuBody,
    EngineStatsBody,
    GpuBody,
    HealthResponse,
    LoadedModel,
    MemoryBody,
    ModelActivityBody,
    ModelDescription,
    OffloadBody,
    RpcDeviceBody,
    ThreadsBody,
    body_of,
)
from locallab_gguf.engine.types import EngineInfo, FlashAttention
from locallab_gguf.placement.hardware import HardwareInfo, choose_threads
from locallab_gguf.placement.offload import OffloadEstimate
from locallab_gguf.serving.footprint import loaded_footprint


class Versions(msgspec.Struct):
    locallab_gguf: str
    llama_cpp_python: str
    python: str


class ModelState(msgspec.Struct):
    """`status`, `current` and `engine` are the default model's; `resident` lists every
    loaded model and `activity` each model's loads and unloads since the start."""

    status: str
    loading: str | None
    last_error: str | None
    current: ModelDescription | None
    engine: EngineStatsBody | None
    resident: list[LoadedModel]
    activity: dict[str, ModelActivityBody]


class Acceleration(msgspec.Struct, kw_only=True):
    backend: Backend
    gpu_offload_supported: bool
    metal: bool
    nvidia: Literal["ok", "no driver", "error"]
    nvidia_detail: str
    driver_version: str | None
    cuda_driver_version: str | None
    advice: str | None  # set when a GPU is here that this llama.cpp build cannot use


class RequestCounts(msgspec.Struct):
    total: int
    by_status: dict[str, int]


class SystemInfo(msgspec.Struct):
    cpu: CpuBody
    memory: MemoryBody
    gpus: list[GpuBody]
    acceleration: Acceleration
    threads: ThreadsBody
    offload: OffloadBody | None  # for the loaded model
    model: ModelState
    uptime_seconds: float
    requests: RequestCounts
    versions: Versions
    # The flat keys of the original LocalLab server, for its clients.
    cpu_usage: float
    memory_usage: float
    gpu_info: list[GpuBody]
    active_model: str | None
    uptime: float
    request_count: int


@get(
    "/health",
    summary="Liveness and model state; never rate limited, open without an API key",
    opt={PUBLIC: True, UNLIMITED: True},
)
async def health(services: NamedDependency[Services]) -> HealthResponse:
    manager = services.manager
    current = manager.current
    return HealthResponse(
        status="healthy",
        model=current.spec.id if current else None,
        model_status=manager.status,
    )


@get("/system/info", summary="Hardware, model, load and versions")
async def system_info(services: NamedDependency[Services]) -> SystemInfo:
    hardware = await asyncio.to_thread(services.hardware.read)
    manager = services.manager
    current = manager.current
    settings = services.settings
    offload = (
        await asyncio.to_thread(loaded_footprint, settings, current, hardware) if current else None
    )
    uptime = time.time() - services.started_at
    by_status = services.metrics.responses_by_status()
    total = sum(by_status.values())
    gpus = [body_of(gpu, GpuBody) for gpu in hardware.nvidia.gpus]
    return SystemInfo(
        cpu=body_of(hardware.cpu, CpuBody),
        memory=body_of(hardware.memory, MemoryBody),
        gpus=gpus,
        acceleration=acceleration(hardware),
        threads=body_of(choose_threads(settings.threads, settings.threads_batch), ThreadsBody),
        offload=offload_body(offload, current.engine.info) if offload and current else None,
        model=ModelState(
            status=manager.status,
            loading=manager.loading_id,
            last_error=manager.last_error,
            current=describe(current) if current else None,
            engine=body_of(current.engine.stats(), EngineStatsBody) if current else None,
            resident=loaded_rows(manager),
            activity={
                model_id: body_of(record, ModelActivityBody)
                for model_id, record in sorted(manager.history.models.items())
            },
        ),
        uptime_seconds=uptime,
        requests=RequestCounts(
            total=total,
            by_status={str(status): n for status, n in sorted(by_status.items())},
        ),
        versions=Versions(
            locallab_gguf=__version__,
            llama_cpp_python=services.engine_version,
            python=platform.python_version(),
        ),
        cpu_usage=hardware.cpu.usage_percent,
        memory_usage=hardware.memory.used_percent,
        gpu_info=gpus,
        active_model=current.spec.id if current else None,
        uptime=uptime,
        request_count=total,
    )


def offload_body(offload: OffloadEstimate, info: EngineInfo) -> OffloadBody:
    """The loaded model's memory, KV cache types and flash attention."""
    forced = info.flash_attn is FlashAttention.ON and info.cache_type_v.quantized
    return msgspec.structs.replace(
        body_of(offload, OffloadBody),
        flash_attn=info.flash_attn.value,
        flash_attn_reason=(
            f"on: the {info.cache_type_v.value} V cache needs it" if forced else None
        ),
        rpc_devices=[body_of(share, RpcDeviceBody) for share in info.rpc.devices]
        if info.rpc
        else [],
    )


def acceleration(hardware: HardwareInfo) -> Acceleration:
    nvidia = hardware.nvidia
    return Acceleration(
        backend=hardware.backend,
        gpu_offload_supported=hardware.gpu_offload_supported,
        metal=hardware.metal,
        nvidia=nvidia.status,
        nvidia_detail=nvidia.detail,
        driver_version=nvidia.driver_version,
        cuda_driver_version=nvidia.cuda_driver_version,
        advice=hardware.advice,
    )
