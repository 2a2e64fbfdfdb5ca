"""NVIDIA GPUs through NVML (the `nvidia-ml-py` binding), read once and shut down cleanly.

Every outcome is an answer, never an exception: GPUs found, no NVIDIA driver on this machine,
or NVML failing part-way (then no GPU is offered for offload, since what was read cannot be
trusted).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any, Literal, Protocol

import msgspec

NvidiaStatus = Literal["ok", "no driver", "error"]


class Nvml(Protocol):
    """The part of NVML we use; the `pynvml` module satisfies it, and so do test stand-ins."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> bytes | str: ...
    def nvmlSystemGetCudaDriverVersion(self) -> int: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> bytes | str: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> bytes | str: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]: ...


NvmlLoader = Callable[[], Nvml]


class GpuInfo(msgspec.Struct, frozen=True, kw_only=True):
    index: int  # NVML's (PCI bus) order
    name: str
    uuid: str
    total_memory_bytes: int
    free_memory_bytes: int
    driver_version: str
    compute_capability: str
    cuda_visible: bool  # False when CUDA_VISIBLE_DEVICES hides it from llama.cpp


class NvidiaInfo(msgspec.Struct, frozen=True, kw_only=True):
    status: NvidiaStatus
    detail: str
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: list[GpuInfo] = []

    @property
    def usable_gpus(self) -> list[GpuInfo]:
        return [gpu for gpu in self.gpus if gpu.cuda_visible]


def load_pynvml() -> Nvml:
    module: Nvml = importlib.import_module("pynvml")
    return module


def read_nvidia(
    load: NvmlLoader = load_pynvml, cuda_visible_devices: str | None = None
) -> NvidiaInfo:
    """`cuda_visible_devices` is the CUDA_VISIBLE_DEVICES value (None when unset)."""
    try:
        nvml = load()
    except ImportError:
        return NvidiaInfo(
            status="no driver",
            detail="nvidia-ml-py is not installed, so NVIDIA GPUs cannot be seen "
            "(it is a dependency of locallab-gguf: reinstall with `make install`)",
        )
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no usable driver
        return NvidiaInfo(status="no driver", detail=f"no NVIDIA driver ({_reason(exc)})")
    try:
        return _read_gpus(nvml, cuda_visible_devices)
    except Exception as exc:
        return NvidiaInfo(
            status="error",
            detail=f"NVML failed while reading the GPUs ({_reason(exc)}); no GPU is used for "
            "offload. Check the driver with `nvidia-smi`, or set --gpu-layers yourself.",
        )
    finally:
        # A failed shutdown leaves nothing for us to undo.
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _read_gpus(nvml: Nvml, cuda_visible_devices: str | None) -> NvidiaInfo:
    driver = _text(nvml.nvmlSystemGetDriverVersion())
    cuda = _cuda_version(nvml.nvmlSystemGetCudaDriverVersion())
    gpus = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        gpus.append(
            GpuInfo(
                index=index,
                name=_text(nvml.nvmlDeviceGetName(handle)),
                uuid=uuid,
                total_memory_bytes=int(memory.total),
                free_memory_bytes=int(memory.free),
                driver_version=driver,
                compute_capability=f"{major}.{minor}",
                cuda_visible=_cuda_visible(index, uuid, cuda_visible_devices),
            )
        )
    found = f"{len(gpus)} NVIDIA GPU{'s' if len(gpus) != 1 else ''}"
    hidden = sum(1 for gpu in gpus if not gpu.cuda_visible)
    if hidden:
        found += f", {hidden} hidden by CUDA_VISIBLE_DEVICES"
    return NvidiaInfo(
        status="ok", detail=found, driver_version=driver, cuda_driver_version=cuda, gpus=gpus
    )


def _cuda_visible(index: int, uuid: str, cuda_visible_devices: str | None) -> bool:
    """CUDA's rule: entries are indices or UUID prefixes; parsing stops at the first bad one."""
    if cuda_visible_devices is None:
        return True
    for entry in (part.strip() for part in cuda_visible_devices.split(",")):
        if entry.isdigit():
            if int(entry) == index:
                return True
        elif entry.startswith("GPU-") or entry.startswith("MIG-"):
            if uuid.startswith(entry):
                return True
        else:
            break
    return False


def _cuda_version(value: int) -> str:
    # NVML encodes CUDA 12.4 as 12040.
    return f"{value // 1000}.{value % 1000 // 10}"


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
