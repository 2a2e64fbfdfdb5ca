"""GET /system/info, `locallab-gguf system`, and the 507 for a model that does not fit."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from locallab_gguf.cli.main import main
from locallab_gguf.cli.system import render, system_report
from locallab_gguf.models.registry import Registry, parse_registry
from locallab_gguf.placement.hardware import HardwareProbe, MemoryInfo
from locallab_gguf.serving.loader import local_engine_opener
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.nvml_standin import GIB, H100, MIB, NvmlStandIn, memory_reading, simulated_probe
from tests.support.servers import RunningServer

KV_CACHE_OF_TEST_SETTINGS = 90 * MIB  # 4 slots x 1,024 tokens x 22.5 KiB, as llama.cpp says


def test_system_info_reports_the_machine_and_the_loaded_models_offload(
    server: RunningServer,
) -> None:
    info = server.client.get("/system/info").json()
    cpu = info["cpu"]
    assert cpu["model"] and 1 <= cpu["physical_cores"] <= cpu["logical_cores"]
    assert isinstance(cpu["instruction_sets"], list)
    assert 0 < info["memory"]["available_bytes"] <= info["memory"]["total_bytes"]
    acceleration = info["acceleration"]
    assert acceleration["nvidia"] in ("ok", "no driver", "error")
    assert acceleration["nvidia_detail"]
    assert acceleration["gpu_offload_supported"] is False  # the CPU build of `make test`
    assert info["threads"] == {
        "generation": 2,
        "batch": 2,
        "generation_source": "--threads",
        "batch_source": "--threads-batch",
    }
    offload = info["offload"]
    assert offload["gpu_layers"] == 0 and offload["total_layers"] == 31
    assert offload["decided_by"] == "auto"
    assert (offload["context_per_slot"], offload["parallel"]) == (1024, 4)
    assert offload["kv_cache_bytes"] == KV_CACHE_OF_TEST_SETTINGS
    assert offload["vram_bytes"] == 0
    assert offload["ram_bytes"] > offload["weights_bytes"] + offload["kv_cache_bytes"]
    # LocalLab's own flat keys keep working.
    for key in ("cpu_usage", "memory_usage", "gpu_info", "active_model", "uptime"):
        assert key in info
    assert info["active_model"] == DEFAULT_ID


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))


def test_system_info_counts_the_responses_sent(make_server: ServerFactory) -> None:
    server = make_server()
    before = server.client.get("/system/info").json()
    assert server.client.get("/health").status_code == 200
    assert server.client.get("/no/such/route").status_code == 404
    after = server.client.get("/system/info").json()
    # The two requests and the first /system/info itself, all answered since.
    assert after["request_count"] == before["request_count"] + 3
    assert after["requests"]["total"] == after["request_count"]
    by_status = after["requests"]["by_status"]
    assert by_status["404"] == before["requests"]["by_status"].get("404", 0) + 1
    assert by_status["200"] >= 2


def test_a_gpu_this_build_cannot_use_is_named_with_the_fix(make_server: ServerFactory) -> None:
    # An H100 (simulated) beside the CPU build that `make test` installs.
    probe = simulated_probe(NvmlStandIn([H100]), offload_supported=False)
    server_log = logging.getLogger("locallab_gguf.serving.loader")
    records = _Records()
    previous_level = server_log.level
    server_log.setLevel(logging.INFO)
    server_log.addHandler(records)
    try:
        server = make_server(opener=local_engine_opener(TEST_SETTINGS, probe), hardware=probe)
    finally:
        server_log.removeHandler(records)
        server_log.setLevel(previous_level)

    info = server.client.get("/system/info").json()
    advice = info["acceleration"]["advice"]
    assert "NVIDIA GPU found (NVIDIA H100 80GB HBM3)" in advice
    assert "`make serve BACKEND=cuda`" in advice
    assert info["acceleration"]["backend"] == "cpu"
    assert info["acceleration"]["driver_version"] == "550.54.15"
    assert info["acceleration"]["cuda_driver_version"] == "12.4"
    gpu = info["gpus"][0]
    assert (gpu["name"], gpu["compute_capability"]) == ("NVIDIA H100 80GB HBM3", "9.0")
    assert gpu["free_memory_bytes"] == 79 * GIB
    assert info["gpu_info"] == info["gpus"]
    assert info["offload"]["gpu_layers"] == 0
    warnings = [text for level, text in records.messages if level == logging.WARNING]
    assert any("make serve BACKEND=cuda" in text for text in warnings), records.messages
    assert any("0 of 31 layers on the GPU" in text for _, text in records.messages)


class _ChangingMemory:
    """A memory reading the test lowers once the first model is serving."""

    def __init__(self, available_bytes: int) -> None:
        self.available_bytes = available_bytes

    def __call__(self) -> MemoryInfo:
        return memory_reading(self.available_bytes)


def _twin_registry(registry: Registry) -> Registry:
    default = registry.models[DEFAULT_ID]
    text = f"""
default = "{DEFAULT_ID}"
[models.{DEFAULT_ID}]
name = "SmolLM2 135M"
repo = "{default.repo}"
file = "{default.file}"
package = "{default.package}"
[models.smollm2-twin]
name = "SmolLM2 135M, a second id"
repo = "{default.repo}"
file = "{default.file}"
package = "{default.package}"
"""
    return parse_registry(text, source="test registry")


def test_a_model_that_does_not_fit_is_refused_with_507_and_the_server_keeps_serving(
    make_server: ServerFactory, registry: Registry
) -> None:
    memory = _ChangingMemory(8 * GIB)
    probe = HardwareProbe(False, nvml=lambda: NvmlStandIn([]), memory=memory, metal=False)
    server = make_server(
        registry_=_twin_registry(registry),
        opener=local_engine_opener(TEST_SETTINGS, probe),
        hardware=probe,
    )
    memory.available_bytes = 200 * MIB

    refused = server.client.post("/models/load", json={"model_id": "smollm2-twin"})
    assert refused.status_code == 507
    detail = refused.json()["detail"]
    assert "model 'smollm2-twin' needs about" in detail
    assert "92.1 MiB of weights, 90.0 MiB of KV cache for 4 slots x 1,024 tokens" in detail
    assert "only 200.0 MiB is available" in detail
    assert "the models that were serving still are" in detail

    assert server.client.get("/health").json()["model"] == DEFAULT_ID
    generated = server.client.post("/generate", json={"prompt": "Hi", "max_length": 3})
    assert generated.status_code == 200
    assert "needs about" in server.client.get("/system/info").json()["model"]["last_error"]

    memory.available_bytes = 8 * GIB  # with room again, the same load succeeds
    loaded = server.client.post("/models/load", json={"model_id": "smollm2-twin"})
    assert loaded.status_code == 200


def test_the_system_command_prints_a_readable_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["system", "--ctx", "1024", "--parallel", "4", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    labels = {line.split()[0] for line in out.splitlines() if line.strip()}
    for label in ("CPU", "Cores", "Instructions", "RAM", "NVIDIA", "Metal", "llama.cpp"):
        assert label in labels, out
    assert "this build cannot offload" in out
    assert "2 for generation (--threads)" in out
    assert f"{DEFAULT_ID} (" in out
    assert "4 slots x 1,024 tokens" in out
    assert "0 of 31 (auto" in out
    assert "KV cache 90.0 MiB" in out
    assert ": fits" in out


def test_the_system_command_says_when_serve_would_refuse_the_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 64 slots of 262,144 tokens: 360 GiB of KV cache, more than any test machine has.
    assert main(["system", "--ctx", "262144", "--parallel", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    plan = report["model"]["plan"]
    assert plan["estimate"]["kv_cache_bytes"] == 360 * GIB
    assert plan["ram_available_bytes"] < plan["estimate"]["ram_bytes"]
    assert report["hardware"]["cpu"]["physical_cores"] >= 1


def test_the_report_of_a_gpu_machine_lists_each_gpu_and_the_plan() -> None:
    probe = simulated_probe(NvmlStandIn([H100, H100]), environ={"CUDA_VISIBLE_DEVICES": "1"})
    text = render(system_report(TEST_SETTINGS, probe, "0.3.36"))
    assert "2 NVIDIA GPUs, 1 hidden by CUDA_VISIBLE_DEVICES" in text
    assert "Driver        550.54.15, CUDA 12.4" in text
    assert "GPU 0         NVIDIA H100 80GB HBM3, 79.0 GiB free of 80.0 GiB" in text
    assert "(hidden by CUDA_VISIBLE_DEVICES)" in text
    assert "Backend       cuda" in text
    assert "GPU layers    31 of 31 (auto: all 31 layers fit GPU 1" in text


def test_the_system_command_runs_as_a_program() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "locallab_gguf", "system", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = msgspec.json.decode(done.stdout)
    assert report["model"]["plan"]["estimate"]["total_layers"] == 31
    assert Path(report["model"]["file"]).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
