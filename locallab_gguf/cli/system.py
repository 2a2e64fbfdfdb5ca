"""`locallab-gguf system`: this machine, and what `serve` would do with a model on it.

Takes the same flags as `serve`, so `locallab-gguf system --model X --ctx 8192` shows the GPU
layers and memory that `serve --model X --ctx 8192` would use, without loading anything.
"""

from __future__ import annotations

import contextlib
import os
from typing import TextIO

import msgspec

from locallab_gguf.errors import LocalLabError
from locallab_gguf.models.files import model_files
from locallab_gguf.models.ids import resolve_model_id
from locallab_gguf.placement.hardware import HardwareInfo, HardwareProbe, Threads, choose_threads
from locallab_gguf.placement.offload import RAM_RESERVE_BYTES, OffloadPlan
from locallab_gguf.settings import Settings
from locallab_gguf.sizes import human_bytes


class ModelPlan(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str
    file: str | None  # None: not on this machine
    plan: OffloadPlan | None
    problem: str | None = None
    # Planned from the header of the file on the hub (not downloaded): the repository's file.
    hub_file: str | None = None


class SystemReport(msgspec.Struct, frozen=True, kw_only=True):
    hardware: HardwareInfo
    llama_cpp_python: str
    threads: Threads
    model: ModelPlan


def system_report(settings: Settings, probe: HardwareProbe, llama_cpp_python: str) -> SystemReport:
    hardware = probe.read()
    return SystemReport(
        hardware=hardware,
        llama_cpp_python=llama_cpp_python,
        threads=choose_threads(settings.threads, settings.threads_batch),
        model=_model_plan(settings, hardware),
    )


def print_system_report(settings: Settings, out: TextIO, *, as_json: bool = False) -> None:
    # Imported here: the engine loads llama.cpp, which only this command and serve need.
    from locallab_gguf.engine.runtime.llama import llama_cpp_version, supports_gpu_offload

    report = system_report(settings, HardwareProbe(supports_gpu_offload()), llama_cpp_version())
    if as_json:
        out.write(msgspec.json.encode(report).decode() + "\n")
    else:
        out.write(render(report))


def render(report: SystemReport) -> str:
    rows = _hardware_rows(report.hardware, report.llama_cpp_python)
    threads = report.threads
    rows.append(
        (
            "Threads",
            f"{threads.generation} for generation ({threads.generation_source}), "
            f"{threads.batch} for prompts ({threads.batch_source})",
        )
    )
    rows.append(("", ""))
    rows += _model_rows(report.model, report.hardware.advice)
    width = max(len(label) for label, _ in rows) + 2
    return "".join(f"{label:<{width}}{value}".rstrip() + "\n" for label, value in rows)


def _hardware_rows(hardware: HardwareInfo, llama_cpp_python: str) -> list[tuple[str, str]]:
    cpu, memory, nvidia = hardware.cpu, hardware.memory, hardware.nvidia
    rows = [
        ("CPU", cpu.model),
        ("Cores", f"{cpu.physical_cores} physical, {cpu.logical_cores} logical"),
        ("Instructions", ", ".join(cpu.instruction_sets) or "none of note"),
        (
            "RAM",
            f"{human_bytes(memory.total_bytes)} total, "
            f"{human_bytes(memory.available_bytes)} available",
        ),
        ("NVIDIA", nvidia.detail),
    ]
    if nvidia.driver_version:
        rows.append(("Driver", f"{nvidia.driver_version}, CUDA {nvidia.cuda_driver_version}"))
    for gpu in nvidia.gpus:
        hidden = "" if gpu.cuda_visible else " (hidden by CUDA_VISIBLE_DEVICES)"
        rows.append(
            (
                f"GPU {gpu.index}",
                f"{gpu.name}, {human_bytes(gpu.free_memory_bytes)} free of "
                f"{human_bytes(gpu.total_memory_bytes)}, compute capability "
                f"{gpu.compute_capability}{hidden}",
            )
        )
    rows.append(("Metal", "yes (Apple silicon)" if hardware.metal else "no"))
    can = "can" if hardware.gpu_offload_supported else "cannot"
    rows.append(("llama.cpp", f"llama-cpp-python {llama_cpp_python}; this build {can} offload"))
    rows.append(("Backend", hardware.backend))
    if hardware.advice:
        rows.append(("Advice", hardware.advice))
    return rows


def _model_rows(model: ModelPlan, advice: str | None) -> list[tuple[str, str]]:
    where = model.file or (
        f"{model.hub_file} on the hub, planned from its header: not downloaded"
        if model.hub_file
        else None
    )
    rows = [("Model", model.model_id if where is None else f"{model.model_id} ({where})")]
    plan = model.plan
    if plan is None:
        return [*rows, ("Plan", model.problem or "no plan")]
    estimate = plan.estimate
    on_workers = plan.rpc_layers
    verdict = (
        "fits"
        if plan.fits
        else f"does NOT fit (keeping {human_bytes(RAM_RESERVE_BYTES)} free): serve refuses it"
    )
    rows += [
        (
            "Context",
            f"{estimate.parallel} slots x {estimate.context_per_slot:,} tokens"
            + (f" ({plan.context_reason})" if plan.context_reason else ""),
        ),
        (
            "GPU layers",
            f"{estimate.gpu_layers - on_workers} of {estimate.total_layers} "
            f"({estimate.decided_by}: {plan.reason})",
        ),
        (
            "Weights",
            f"{human_bytes(estimate.weights_bytes)}; KV cache "
            f"{human_bytes(estimate.kv_cache_bytes)} ({estimate.cache_type_k.value} K, "
            f"{estimate.cache_type_v.value} V)",
        ),
        ("VRAM", f"{human_bytes(estimate.vram_bytes)} estimated"),
        (
            "RAM",
            f"{human_bytes(estimate.ram_bytes)} estimated, "
            f"{human_bytes(plan.ram_available_bytes)} available: {verdict}",
        ),
    ]
    if plan.rpc_reason:
        rows.append(("RPC workers", plan.rpc_reason))
    if plan.rpc is not None:
        from locallab_gguf.serving.loader import rpc_plan_lines

        rows += [("", line) for line in rpc_plan_lines(plan)]
    if plan.warning and plan.warning not in (plan.reason, advice):
        rows.append(("Warning", plan.warning))
    return rows


def _model_plan(settings: Settings, hardware: HardwareInfo) -> ModelPlan:
    # Imported here: server pulls in the HTTP stack, which planning does not otherwise need.
    from locallab_gguf.serving.loader import hub_file_plan, load_settings_registry, offload_plan
    from locallab_gguf.serving.prompt_cache_budget import PromptCacheBudget

    registry = load_settings_registry(settings)
    model_id = settings.model or registry.default
    try:
        files = model_files(settings, os.environ)
        spec = resolve_model_id(
            registry, model_id, allow_custom=settings.custom_models, pick=files.pick_hub_file
        )
        path = files.local_path(spec)
        if path is None and files.access.offline:
            return ModelPlan(
                model_id=model_id,
                file=None,
                plan=None,
                problem=f"not on this machine; `locallab-gguf pull {model_id}` fetches it",
            )
        # The prompt caches' budget, as `serve` would promise it: the auto context leaves it.
        with contextlib.closing(PromptCacheBudget.of_settings(settings.cache_ram)) as cache:
            if path is None:  # planned from the file's header on the hub: not downloaded
                return ModelPlan(
                    model_id=spec.id,
                    file=None,
                    hub_file=f"{spec.repo}/{spec.file}",
                    plan=hub_file_plan(settings, spec, hardware, files.access, cache=cache),
                )
            plan = offload_plan(settings, spec, path, hardware, cache)
        return ModelPlan(model_id=model_id, file=str(path), plan=plan)
    except LocalLabError as exc:
        return ModelPlan(model_id=model_id, file=None, plan=None, problem=str(exc))
