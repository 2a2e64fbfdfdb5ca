"""GET /health and GET /system/info."""

from __future__ import annotations

import asyncio
import platform
import time

import msgspec
from litestar import get
from litestar.di import NamedDependency

from locallab_gguf import __version__
from locallab_gguf.api.routes.models import describe
from locallab_gguf.api.services import Services
from locallab_gguf.api.wire import HealthResponse, ModelDescription
from locallab_gguf.engine import llama_cpp_version, supports_gpu_offload
from locallab_gguf.engine.types import EngineStats
from locallab_gguf.hardware import Backend, CpuInfo, GpuInfo, HardwareInfo, MemoryInfo, probe


class Versions(msgspec.Struct):
    locallab_gguf: str
    llama_cpp_python: str
    python: str


class ModelState(msgspec.Struct):
    status: str
    loading: str | None
    last_error: str | None
    current: ModelDescription | None
    engine: EngineStats | None


class Acceleration(msgspec.Struct):
    backend: Backend
    gpu_offload_supported: bool


class RequestCounts(msgspec.Struct):
    total: int
    by_status: dict[str, int]


class SystemInfo(msgspec.Struct):
    cpu: CpuInfo
    memory: MemoryInfo
    gpus: list[GpuInfo]
    acceleration: Acceleration
    model: ModelState
    uptime_seconds: float
    requests: RequestCounts
    versions: Versions
    # The flat keys of the original LocalLab server, for its clients.
    cpu_usage: float
    memory_usage: float
    gpu_info: list[GpuInfo]
    active_model: str | None
    uptime: float
    request_count: int


@get("/health", summary="Liveness and model state; never rate limited")
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
    hardware: HardwareInfo = await asyncio.to_thread(probe, supports_gpu_offload())
    manager = services.manager
    current = manager.current
    uptime = time.time() - services.started_at
    counts = services.requests
    return SystemInfo(
        cpu=hardware.cpu,
        memory=hardware.memory,
        gpus=hardware.gpus,
        acceleration=Acceleration(hardware.backend, hardware.gpu_offload_supported),
        model=ModelState(
            status=manager.status,
            loading=manager.loading_id,
            last_error=manager.last_error,
            current=describe(current) if current else None,
            engine=current.engine.stats() if current else None,
        ),
        uptime_seconds=uptime,
        requests=RequestCounts(
            total=counts.total,
            by_status={str(status): n for status, n in sorted(counts.by_status.items())},
        ),
        versions=Versions(
            locallab_gguf=__version__,
            llama_cpp_python=llama_cpp_version(),
            python=platform.python_version(),
        ),
        cpu_usage=hardware.cpu.usage_percent,
        memory_usage=hardware.memory.used_percent,
        gpu_info=hardware.gpus,
        active_model=current.spec.id if current else None,
        uptime=uptime,
        request_count=counts.total,
    )
