"""Facts about this machine: CPU, memory, GPUs, and which acceleration llama.cpp can use.

Nothing here imports llama_cpp: whether the installed build can offload is passed in by the
caller, which asks the engine.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import msgspec
import psutil

from locallab_gguf.placement.nvidia import GpuInfo, NvidiaInfo, NvmlLoader, load_pynvml, read_nvidia

Backend = Literal["cpu", "cuda", "metal"]

# CPU feature flags (as Linux names them) that decide which llama.cpp kernels run fast.
_X86_SETS = {
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx_vnni": "AVX-VNNI",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}
_ARM_SETS = {
    "asimd": "NEON",
    "asimddp": "DOTPROD",
    "i8mm": "I8MM",
    "sve": "SVE",
    "sve2": "SVE2",
}
# macOS names the same features in `sysctl hw.optional`.
_DARWIN_SETS = {
    "hw.optional.avx2_0": "AVX2",
    "hw.optional.avx512f": "AVX-512",
    "hw.optional.arm.FEAT_DotProd": "DOTPROD",
    "hw.optional.arm.FEAT_I8MM": "I8MM",
}
FIX_CUDA = "make serve BACKEND=cuda"
FIX_METAL = "make serve BACKEND=metal"


class CpuInfo(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    physical_cores: int
    logical_cores: int
    instruction_sets: list[str]
    usage_percent: float


class MemoryInfo(msgspec.Struct, frozen=True, kw_only=True):
    total_bytes: int
    available_bytes: int
    used_percent: float


class HardwareInfo(msgspec.Struct, frozen=True, kw_only=True):
    cpu: CpuInfo
    memory: MemoryInfo
    nvidia: NvidiaInfo
    metal: bool  # Apple silicon, where llama.cpp offloads through Metal
    gpu_offload_supported: bool  # the installed llama.cpp build can offload at all
    backend: Backend  # where layers go: the GPU this build can use, or the CPU
    advice: str | None  # what to do when a GPU is here but this build cannot use it

    @property
    def offload_gpus(self) -> list[GpuInfo]:
        """The NVIDIA GPUs layers can go to: none unless this build offloads through CUDA."""
        return self.nvidia.usable_gpus if self.backend == "cuda" else []


class Threads(msgspec.Struct, frozen=True, kw_only=True):
    generation: int
    batch: int
    generation_source: str
    batch_source: str


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def logical_cores() -> int:
    return psutil.cpu_count(logical=True) or os.cpu_count() or 1


def choose_threads(threads: int | None, threads_batch: int | None) -> Threads:
    """Generation is memory-bound: one thread per physical core. Prompts are compute-bound
    and gain from hyper-threads: one per logical core."""
    return Threads(
        generation=threads or physical_cores(),
        batch=threads_batch or logical_cores(),
        generation_source="--threads" if threads else "physical cores",
        batch_source="--threads-batch" if threads_batch else "logical cores",
    )


def is_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def cpu_model() -> str:
    if platform.system() == "Darwin":
        brand = _sysctl("machdep.cpu.brand_string")
        if brand:
            return brand
    for line in _cpuinfo_lines():
        # x86 says "model name"; some ARM kernels say "Model" or "Hardware".
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def instruction_sets(flags: Iterable[str], machine: str) -> list[str]:
    """The notable sets among a CPU's feature flags (Linux names), in a stable order."""
    present = set(flags)
    names = [name for flag, name in (_X86_SETS | _ARM_SETS).items() if flag in present]
    if machine.lower() in ("arm64", "aarch64") and "NEON" not in names:
        names.insert(0, "NEON")  # mandatory on 64-bit ARM, whatever the kernel lists
    return names


def cpu_flags() -> list[str]:
    if platform.system() == "Darwin":
        return [flag for flag in _DARWIN_SETS if _sysctl(flag) == "1"]
    for line in _cpuinfo_lines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return value.split()
    return []


def read_cpu() -> CpuInfo:
    flags = cpu_flags()
    if platform.system() == "Darwin":
        sets = [_DARWIN_SETS[flag] for flag in flags]
        if platform.machine() == "arm64":
            sets.insert(0, "NEON")
    else:
        sets = instruction_sets(flags, platform.machine())
    return CpuInfo(
        model=cpu_model(),
        physical_cores=physical_cores(),
        logical_cores=logical_cores(),
        instruction_sets=sets,
        usage_percent=psutil.cpu_percent(interval=None),
    )


def read_memory() -> MemoryInfo:
    memory = psutil.virtual_memory()
    return MemoryInfo(
        total_bytes=memory.total, available_bytes=memory.available, used_percent=memory.percent
    )


def choose_backend(
    gpu_offload_supported: bool, metal: bool, nvidia: NvidiaInfo
) -> tuple[Backend, str | None]:
    """Where layers can go, and the advice to give when a GPU sits idle for want of a build."""
    if gpu_offload_supported:
        if metal:
            return "metal", None
        if nvidia.usable_gpus:
            return "cuda", None
        return "cpu", None
    if nvidia.usable_gpus:
        names = ", ".join(gpu.name for gpu in nvidia.usable_gpus)
        return "cpu", (
            f"NVIDIA GPU found ({names}) but this llama.cpp build cannot offload to it, so "
            f"every layer runs on the CPU. Rebuild with CUDA: `{FIX_CUDA}`"
        )
    if metal:
        return "cpu", (
            "this is Apple silicon but this llama.cpp build cannot use Metal, so every layer "
            f"runs on the CPU. Rebuild with Metal: `{FIX_METAL}`"
        )
    return "cpu", None


class HardwareProbe:
    """Reads the machine when asked. Each source can be replaced: tests simulate GPUs with an
    NVML stand-in and memory pressure with a memory reading."""

    def __init__(
        self,
        gpu_offload_supported: bool,
        *,
        nvml: NvmlLoader = load_pynvml,
        memory: Callable[[], MemoryInfo] = read_memory,
        metal: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.gpu_offload_supported = gpu_offload_supported
        self._nvml = nvml
        self._memory = memory
        self._metal = is_apple_silicon() if metal is None else metal
        self._environ = os.environ if environ is None else environ

    def memory(self) -> MemoryInfo:
        return self._memory()

    def nvidia(self) -> NvidiaInfo:
        return read_nvidia(self._nvml, self._environ.get("CUDA_VISIBLE_DEVICES"))

    def read(self) -> HardwareInfo:
        nvidia = self.nvidia()
        backend, advice = choose_backend(self.gpu_offload_supported, self._metal, nvidia)
        return HardwareInfo(
            cpu=read_cpu(),
            memory=self.memory(),
            nvidia=nvidia,
            metal=self._metal,
            gpu_offload_supported=self.gpu_offload_supported,
            backend=backend,
            advice=advice,
        )


def _cpuinfo_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            # The first processor's block describes them all.
            return cpuinfo.read().split("\n\n", 1)[0].splitlines()
    except OSError:
        return []


def _sysctl(name: str) -> str | None:
    try:
        done = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
