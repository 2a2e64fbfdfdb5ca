"""ggml's RPC functions and device registry, bound with ctypes (llama-cpp-python binds none).

The libraries are the ones llama-cpp-python's own module loaded, opened again by path: the
dynamic linker hands back the same copy, so a worker registered here is one llama.cpp's model
loader sees (its devices take part in a load made with `devices = NULL`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable

import llama_cpp
import msgspec

from locallab_gguf.engine.rpc.protocol import Endpoint
from locallab_gguf.errors import ConfigError, RpcWorkerUnavailable

log = logging.getLogger(__name__)

# ggml_backend_dev_type: CPU, GPU, IGPU, ACCEL, META (ggml-backend.h)
_DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "accelerator", 4: "meta"}


class LocalDevice(msgspec.Struct, frozen=True, kw_only=True):
    """A device of this machine's llama.cpp build, as ggml's registry lists it."""

    name: str  # CPU, CUDA0, Metal...
    description: str
    kind: str
    free_bytes: int
    total_bytes: int


def _llama_library() -> ctypes.CDLL:
    """libllama as llama-cpp-python opened it, by the same path, so the same copy. Symbols
    are looked up through its dependencies (libggml, libggml-base, libggml-rpc): opening
    those by another name (libggml.so beside the linker's libggml.so.0) maps a second copy,
    with a device registry of its own that llama.cpp never reads."""
    return ctypes.CDLL(llama_cpp.llama_cpp._lib._name)


@functools.cache
def _ggml() -> ctypes.CDLL:
    lib = _llama_library()
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_register.restype = None
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    lib.ggml_backend_dev_memory.restype = None
    return lib


@functools.cache
def _rpc() -> ctypes.CDLL:
    lib = _llama_library()
    try:
        add_server = lib.ggml_backend_rpc_add_server
        start_server = lib.ggml_backend_rpc_start_server
    except AttributeError:
        raise ConfigError(
            "this llama-cpp-python was built without ggml's RPC backend (-DGGML_RPC=ON); "
            "`make install` builds it with RPC"
        ) from None
    add_server.argtypes = [ctypes.c_char_p]
    add_server.restype = ctypes.c_void_p
    start_server.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    start_server.restype = None
    return lib


def rpc_supported() -> bool:
    try:
        _rpc()
    except ConfigError:
        return False
    return True


def attach_workers(endpoints: list[Endpoint]) -> None:
    """Register each worker's devices with ggml, in order, so the next model load places
    layers on them (llama.cpp puts RPC devices first in its device list). Each was probed just
    before: llama.cpp aborts the process on a worker it cannot reach."""
    rpc, ggml = _rpc(), _ggml()
    for endpoint in endpoints:
        registry = rpc.ggml_backend_rpc_add_server(str(endpoint).encode())
        if not registry:
            raise RpcWorkerUnavailable(f"RPC worker {endpoint} offers no devices")
        ggml.ggml_backend_register(registry)


def local_devices() -> list[LocalDevice]:
    """This build's devices: the CPU, and the GPUs its backends see."""
    ggml = base = _ggml()
    llama_cpp.llama_backend_init()
    devices = []
    for index in range(ggml.ggml_backend_dev_count()):
        device = ggml.ggml_backend_dev_get(index)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        base.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        devices.append(
            LocalDevice(
                name=(base.ggml_backend_dev_name(device) or b"").decode(),
                description=(base.ggml_backend_dev_description(device) or b"").decode(),
                kind=_DEVICE_TYPES.get(base.ggml_backend_dev_type(device), "other"),
                free_bytes=free.value,
                total_bytes=total.value,
            )
        )
    return devices


# struct ggml_backend_device { struct ggml_backend_device_i iface; reg; context; }: iface is
# 15 function pointers, get_memory the third (ggml-backend-impl.h).
_GET_MEMORY = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
)
_GET_MEMORY_SLOT = 2
# Kept alive for the life of the process: ggml calls them from its server thread.
_memory_caps: list[Callable[..., None]] = []


def _cap_memory(device: int, cap_bytes: int) -> None:
    """Make `device` report at most `cap_bytes` free and total.

    ggml's RPC server answers a client's memory question with the device's own report, and
    offers no limit of its own; the worker's --memory is what it is willing to hold, so the
    device's report is wrapped, in this process only. Planners (ours, llama.cpp's) split layers
    by that report; nothing else reads it."""
    slots = ctypes.cast(device, ctypes.POINTER(ctypes.c_void_p))
    original = _GET_MEMORY(slots[_GET_MEMORY_SLOT])

    def capped(
        dev: int,
        free: ctypes._Pointer[ctypes.c_size_t],
        total: ctypes._Pointer[ctypes.c_size_t],
    ) -> None:
        original(dev, free, total)
        free[0] = min(free[0], cap_bytes)
        total[0] = min(total[0], cap_bytes)

    wrapper = _GET_MEMORY(capped)
    _memory_caps.append(wrapper)
    slots[_GET_MEMORY_SLOT] = ctypes.cast(wrapper, ctypes.c_void_p).value


def serve_devices(
    endpoint: Endpoint,
    *,
    device_names: list[str],
    threads: int,
    cache_dir: str | None,
    memory_cap_bytes: int | None,
) -> None:
    """Run ggml's RPC server on `endpoint` for the named devices (all GPUs, else the CPU, when
    none is named); it serves one client at a time and returns only if it cannot listen."""
    ggml = base = _ggml()
    rpc = _rpc()
    llama_cpp.llama_backend_init()
    by_name = {}
    for index in range(ggml.ggml_backend_dev_count()):
        device = ggml.ggml_backend_dev_get(index)
        name = (base.ggml_backend_dev_name(device) or b"").decode()
        by_name[name] = (device, base.ggml_backend_dev_type(device))
    if device_names:
        unknown = [name for name in device_names if name not in by_name]
        if unknown:
            raise ConfigError(
                f"no device named {', '.join(unknown)} here; this build has {', '.join(by_name)}"
            )
        chosen = [by_name[name][0] for name in device_names]
    else:
        gpus = [device for device, kind in by_name.values() if kind in (1, 2)]
        chosen = gpus or [device for device, kind in by_name.values() if kind == 0][:1]
    if memory_cap_bytes is not None:
        for device in chosen:
            _cap_memory(device, memory_cap_bytes)
    devices = (ctypes.c_void_p * len(chosen))(*chosen)
    rpc.ggml_backend_rpc_start_server(
        str(endpoint).encode(),
        cache_dir.encode() if cache_dir else None,
        threads,
        len(chosen),
        devices,
    )
