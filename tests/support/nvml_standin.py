"""A stand-in for NVML (the `pynvml` module) with simulated GPUs: there is no NVIDIA GPU here.

It raises pynvml's own exception classes, so the code under test sees what a real driver
would throw, and it records init/shutdown so tests can check NVML is always closed.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pynvml

from locallab_gguf.placement.hardware import HardwareProbe, MemoryInfo

GIB = 1024**3
MIB = 1024**2


class SimulatedGpu(msgspec.Struct, frozen=True):
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int] = (9, 0)


H100 = SimulatedGpu("NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB)


def gpu_with_free(free_bytes: int) -> SimulatedGpu:
    return SimulatedGpu("Simulated GPU", max(free_bytes, 8 * GIB), free_bytes, (8, 6))


class NvmlStandIn:
    def __init__(
        self,
        gpus: list[SimulatedGpu],
        *,
        init_error: int | None = None,
        fail_memory_of: int | None = None,
    ) -> None:
        """`init_error` is an NVML error code nvmlInit raises; `fail_memory_of` is the index
        of a GPU whose memory query fails (the driver losing it mid-query)."""
        self.gpus = gpus
        self.init_error = init_error
        self.fail_memory_of = fail_memory_of
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self.gpus[handle].name.encode()

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle:08d}-0000-0000-0000-000000000000"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        if handle == self.fail_memory_of:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        gpu = self.gpus[handle]
        return SimpleNamespace(
            total=gpu.total_bytes, free=gpu.free_bytes, used=gpu.total_bytes - gpu.free_bytes
        )

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self.gpus[handle].compute_capability


def memory_reading(available_bytes: int, total_bytes: int = 64 * GIB) -> MemoryInfo:
    used = 100 * (1 - available_bytes / total_bytes)
    return MemoryInfo(total_bytes=total_bytes, available_bytes=available_bytes, used_percent=used)


def simulated_probe(
    nvml: NvmlStandIn,
    *,
    offload_supported: bool = True,
    available_ram: int = 32 * GIB,
    metal: bool = False,
    environ: dict[str, str] | None = None,
) -> HardwareProbe:
    return HardwareProbe(
        offload_supported,
        nvml=lambda: nvml,
        memory=lambda: memory_reading(available_ram),
        metal=metal,
        environ=environ or {},
    )
