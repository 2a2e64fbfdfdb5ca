"""Facts about this machine: CPU, memory, GPUs, and which acceleration llama.cpp can use."""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
from typing import Any, Literal

import msgspec
import psutil

Backend = Literal["cpu", "cuda", "metal"]


class CpuInfo(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    physical_cores: int
    logical_cores: int
    usage_percent: float


class MemoryInfo(msgspec.Struct, frozen=True, kw_only=True):
    total_bytes: int
    available_bytes: int
    used_percent: float


class GpuInfo(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    name: str
    total_memory_bytes: int
    free_memory_bytes: int
    driver_version: str


class HardwareInfo(msgspec.Struct, frozen=True, kw_only=True):
    cpu: CpuInfo
    memory: MemoryInfo
    gpus: list[GpuInfo]
    backend: Backend
    gpu_offload_supported: bool


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def logical_cores() -> int:
    return psutil.cpu_count(logical=True) or os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def is_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def nvidia_gpus(nvml: Any = None) -> list[GpuInfo]:
    """NVIDIA GPUs through NVML (the module, or a stand-in for tests); [] without a driver."""
    if nvml is None:
        nvml = importlib.import_module("pynvml")
    try:
        nvml.nvmlInit()
    except Exception:  # no driver, no library: simply no NVIDIA GPU
        return []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    total_memory_bytes=int(memory.total),
                    free_memory_bytes=int(memory.free),
                    driver_version=driver,
                )
            )
        return gpus
    except Exception:
        return []
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def probe(gpu_offload_supported: bool, nvml: Any = None) -> HardwareInfo:
    memory = psutil.virtual_memory()
    gpus = nvidia_gpus(nvml)
    backend: Backend = "cpu"
    if gpu_offload_supported:
        backend = "metal" if is_apple_silicon() else "cuda" if gpus else "cpu"
    return HardwareInfo(
        cpu=CpuInfo(
            model=cpu_model(),
            physical_cores=physical_cores(),
            logical_cores=logical_cores(),
            usage_percent=psutil.cpu_percent(interval=None),
        ),
        memory=MemoryInfo(
            total_bytes=memory.total,
            available_bytes=memory.available,
            used_percent=memory.percent,
        ),
        gpus=gpus,
        backend=backend,
        gpu_offload_supported=gpu_offload_supported,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
