"""Hardware facts: NVIDIA GPUs through NVML (here a stand-in), CPU features, threads, backend."""

from __future__ import annotations

import pynvml
import pytest

from locallab_gguf.placement.hardware import (
    FIX_CUDA,
    HardwareProbe,
    choose_threads,
    instruction_sets,
    logical_cores,
    physical_cores,
)
from locallab_gguf.placement.nvidia import read_nvidia
from tests.support.nvml_standin import GIB, H100, NvmlStandIn, SimulatedGpu, simulated_probe


def test_gpus_are_read_with_memory_driver_and_compute_capability() -> None:
    nvml = NvmlStandIn([H100, SimulatedGpu("NVIDIA L4", 24 * GIB, 20 * GIB, (8, 9))])
    nvidia = read_nvidia(lambda: nvml)
    assert nvidia.status == "ok"
    assert nvidia.detail == "2 NVIDIA GPUs"
    assert (nvidia.driver_version, nvidia.cuda_driver_version) == ("550.54.15", "12.4")
    assert [(gpu.index, gpu.name, gpu.compute_capability) for gpu in nvidia.gpus] == [
        (0, "NVIDIA H100 80GB HBM3", "9.0"),
        (1, "NVIDIA L4", "8.9"),
    ]
    assert nvidia.gpus[1].free_memory_bytes == 20 * GIB
    assert nvidia.gpus[1].total_memory_bytes == 24 * GIB
    assert nvml.calls == ["init", "shutdown"]


def test_no_driver_is_a_clean_answer() -> None:
    nvml = NvmlStandIn([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    nvidia = read_nvidia(lambda: nvml)
    assert nvidia.status == "no driver"
    assert nvidia.detail == "no NVIDIA driver (NVML Shared Library Not Found)"
    assert nvidia.gpus == []
    assert nvml.calls == ["init"]  # nothing to shut down when init failed


def test_nvml_binding_missing_is_a_clean_answer() -> None:
    def missing() -> NvmlStandIn:
        raise ModuleNotFoundError("No module named 'pynvml'")

    nvidia = read_nvidia(missing)
    assert nvidia.status == "no driver"
    assert "nvidia-ml-py is not installed" in nvidia.detail


def test_nvml_failing_mid_query_offers_no_gpu_and_still_shuts_down() -> None:
    nvml = NvmlStandIn([H100, H100], fail_memory_of=1)
    nvidia = read_nvidia(lambda: nvml)
    assert nvidia.status == "error"
    assert "GPU is lost" in nvidia.detail and "nvidia-smi" in nvidia.detail
    assert nvidia.gpus == []
    assert nvml.calls == ["init", "shutdown"]


def test_this_machine_answers_without_raising() -> None:
    nvidia = read_nvidia()
    assert nvidia.status in ("ok", "no driver", "error")
    assert nvidia.detail


@pytest.mark.parametrize(
    ("visible", "usable"),
    [
        (None, [0, 1, 2]),
        ("1", [1]),
        ("2,0", [0, 2]),
        ("GPU-00000001", [1]),
        ("", []),
        ("-1", []),
        ("0,bogus,2", [0]),  # CUDA stops at the first entry it cannot parse
    ],
)
def test_cuda_visible_devices_hides_gpus_from_offload(
    visible: str | None, usable: list[int]
) -> None:
    nvidia = read_nvidia(lambda: NvmlStandIn([H100, H100, H100]), visible)
    assert len(nvidia.gpus) == 3
    assert [gpu.index for gpu in nvidia.usable_gpus] == usable


def test_instruction_sets_of_note() -> None:
    x86 = [
        "fpu",
        "sse2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_int8",
    ]
    assert instruction_sets(x86, "x86_64") == [
        "AVX",
        "AVX2",
        "FMA",
        "F16C",
        "AVX-512",
        "AVX-512 VNNI",
        "AVX-512 BF16",
        "AMX",
        "AMX-INT8",
    ]
    assert instruction_sets(["fp", "asimd", "asimddp", "i8mm", "sve"], "aarch64") == [
        "NEON",
        "DOTPROD",
        "I8MM",
        "SVE",
    ]
    # 64-bit ARM always has NEON, even where the kernel does not list asimd.
    assert instruction_sets([], "arm64") == ["NEON"]
    assert instruction_sets(["sse2"], "x86_64") == []


def test_threads_default_to_physical_and_logical_cores() -> None:
    chosen = choose_threads(None, None)
    assert (chosen.generation, chosen.batch) == (physical_cores(), logical_cores())
    assert (chosen.generation_source, chosen.batch_source) == ("physical cores", "logical cores")
    given = choose_threads(3, 5)
    assert (given.generation, given.batch) == (3, 5)
    assert (given.generation_source, given.batch_source) == ("--threads", "--threads-batch")


def test_backend_follows_the_build_and_the_gpus() -> None:
    h100 = NvmlStandIn([H100])
    no_driver = NvmlStandIn([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    cuda = simulated_probe(h100).read()
    assert (cuda.backend, cuda.advice) == ("cuda", None)

    cpu_build = simulated_probe(h100, offload_supported=False).read()
    assert cpu_build.backend == "cpu"
    assert cpu_build.advice is not None
    assert "NVIDIA H100 80GB HBM3" in cpu_build.advice and f"`{FIX_CUDA}`" in cpu_build.advice

    metal = simulated_probe(no_driver, metal=True).read()
    assert (metal.backend, metal.advice) == ("metal", None)
    metal_cpu_build = simulated_probe(no_driver, metal=True, offload_supported=False).read()
    assert metal_cpu_build.backend == "cpu"
    assert "BACKEND=metal" in (metal_cpu_build.advice or "")

    plain_cpu = simulated_probe(no_driver, offload_supported=False).read()
    assert (plain_cpu.backend, plain_cpu.advice) == ("cpu", None)


def test_the_real_probe_reads_this_machine() -> None:
    hardware = HardwareProbe(False).read()
    assert hardware.cpu.model
    assert 1 <= hardware.cpu.physical_cores <= hardware.cpu.logical_cores
    assert 0 < hardware.memory.available_bytes <= hardware.memory.total_bytes
