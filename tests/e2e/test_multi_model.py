"""Several models at once: loaded when a request names them, unloaded when idle or to make
room, each in its own worker process. Two real models: the default SmolLM2 135M and Gemma 3
270M (tests/support/two_models.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import msgspec
import pytest

from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.registry import Registry
from locallab_gguf.placement.hardware import HardwareProbe, MemoryInfo
from locallab_gguf.placement.offload import GPU_SAFETY_FRACTION, RAM_RESERVE_BYTES
from locallab_gguf.serving.loader import LocalPlanner
from locallab_gguf.settings import Settings
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory, sse_events
from tests.support.nvml_standin import GIB, NvmlStandIn, SimulatedGpu, simulated_probe
from tests.support.servers import RunningServer, wait_until
from tests.support.two_models import (
    BROKEN_FILE,
    BROKEN_ID,
    BROKEN_REPO,
    GEMMA_FILE,
    GEMMA_ID,
    GEMMA_REPO,
    SMOLLM2_SHA,
    assembled_gemma,
    hub_cache_with,
    truncated_copy,
    two_model_registry,
)

MIB = 1024 * 1024
# A prompt both models continue for longer than any test reads: counting goes on and on.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"
LONG = {"prompt": COUNTING, "max_length": 32, "temperature": 0}
# Two streams at once: long enough that neither ends before both have started.
LONGER = {**LONG, "max_length": 64}
SHORT = {"prompt": COUNTING, "max_length": 4, "temperature": 0}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> ModelFiles:
    """Model files: the default model from its package, Gemma and a truncated GGUF from a
    Hugging Face cache layout (no hub is ever asked)."""
    root = tmp_path_factory.mktemp("two-models")
    broken = truncated_copy(model_path, root / BROKEN_FILE)
    cache = hub_cache_with(
        root / "hub",
        {(GEMMA_REPO, GEMMA_FILE): assembled_gemma(), (BROKEN_REPO, BROKEN_FILE): broken},
    )
    return ModelFiles(str(cache))


@pytest.fixture(scope="module")
def registry2() -> Registry:
    return two_model_registry(DEFAULT_ID, SMOLLM2_SHA)


@pytest.fixture
def start(make_server: ServerFactory, two_models: ModelFiles, registry2: Registry) -> Iterator[Any]:
    def started(settings: Settings = TEST_SETTINGS, **kwargs: Any) -> RunningServer:
        kwargs.setdefault("registry_", registry2)
        return make_server(settings, files=two_models, **kwargs)

    yield started


def resident_ids(server: RunningServer) -> list[str]:
    body = server.client.get("/models/loaded").json()
    return sorted(model["id"] for model in body["models"])


def worker_of(server: RunningServer, model_id: str) -> Any:
    """The worker process of a resident model (its Popen)."""
    model = server.services.manager.resident_model(model_id)
    assert model is not None, f"{model_id} is not resident"
    return model.engine._process.popen  # type: ignore[attr-defined]


def generate(
    server: RunningServer, model_id: str | None, timeout: float | None = 600, **fields: Any
) -> httpx.Response:
    body = {**SHORT, **fields}
    if model_id is not None:
        body["model_id"] = model_id
    return server.client.post("/generate", json=body, timeout=timeout)


def first_event(lines: Iterator[str]) -> str:
    return next(line for line in lines if line.startswith("data:"))


def test_streams_on_two_models_at_once_both_progress_and_finish(start: Any) -> None:
    server = start()
    answers = {model: generate(server, model, **LONGER).json() for model in (DEFAULT_ID, GEMMA_ID)}
    assert {model: answer["model"] for model, answer in answers.items()} == {
        DEFAULT_ID: DEFAULT_ID,
        GEMMA_ID: GEMMA_ID,
    }
    references = {model: answer["response"] for model, answer in answers.items()}
    assert resident_ids(server) == sorted([DEFAULT_ID, GEMMA_ID])
    with (
        server.client.stream("POST", "/generate", json={**LONGER, "stream": True}) as smol,
        server.client.stream(
            "POST", "/generate", json={**LONGER, "model_id": GEMMA_ID, "stream": True}
        ) as gemma,
    ):
        smol_lines, gemma_lines = smol.iter_lines(), gemma.iter_lines()
        smol_first, gemma_first = first_event(smol_lines), first_event(gemma_lines)
        # Both engines are generating at the same moment, each in its own process.
        busy = [server.engine_stats(m).slots_busy for m in (DEFAULT_ID, GEMMA_ID)]
        assert busy == [1, 1]
        smol_events = sse_events([smol_first, "", *smol_lines])
        gemma_events = sse_events([gemma_first, "", *gemma_lines])
    assert smol_events[-1] == gemma_events[-1] == "[DONE]"
    assert "".join(smol_events[:-1]) == references[DEFAULT_ID]
    assert "".join(gemma_events[:-1]) == references[GEMMA_ID]


def _room_for_one(registry2: Registry, two_models: ModelFiles) -> HardwareProbe:
    """A machine whose memory holds either model, not both."""
    planner = LocalPlanner(TEST_SETTINGS)
    needs = [
        planner.plan(spec, two_models.resolve(spec)).estimate.ram_bytes
        for spec in (registry2.get(DEFAULT_ID), registry2.get(GEMMA_ID))
    ]
    available = max(needs) + RAM_RESERVE_BYTES + 8 * MIB
    assert sum(needs) + RAM_RESERVE_BYTES > available
    reading = MemoryInfo(total_bytes=available, available_bytes=available, used_percent=0.0)
    return HardwareProbe(False, nvml=lambda: NvmlStandIn([]), memory=lambda: reading, metal=False)


def test_with_room_for_one_the_idle_model_makes_way_for_the_requested_one(
    start: Any, registry2: Registry, two_models: ModelFiles
) -> None:
    # No prompt cache: its budget is memory promised to the caches, which this machine,
    # simulated with room for one model alone, does not have.
    no_cache = msgspec.structs.replace(TEST_SETTINGS, cache_ram=0)
    server = start(no_cache, hardware=_room_for_one(registry2, two_models))
    smol_worker = worker_of(server, DEFAULT_ID)

    served = generate(server, GEMMA_ID)  # waits while the idle model goes and Gemma loads
    assert served.status_code == 200, served.text
    assert resident_ids(server) == [GEMMA_ID]
    assert smol_worker.poll() is not None  # its worker process has ended

    again = generate(server, None)  # no model named: the default model, loaded again
    assert again.status_code == 200, again.text
    assert resident_ids(server) == [DEFAULT_ID]
    metrics = server.client.get("/metrics").text
    assert f'locallab_model_unloads_total{{model="{GEMMA_ID}",reason="make_room"}} 1.0' in metrics
    assert f'locallab_model_loads_total{{model="{DEFAULT_ID}"}} 2.0' in metrics


class _GpuHoldingResidents(NvmlStandIn):
    """One simulated GPU whose free memory is what the resident models' estimates leave: the
    VRAM their workers would hold on a CUDA build (this one runs them on the CPU)."""

    def __init__(self, total_bytes: int) -> None:
        super().__init__([SimulatedGpu("Simulated GPU", total_bytes, total_bytes)])
        self.server: RunningServer | None = None

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        gpu = self.gpus[handle]
        manager = self.server.services.manager if self.server is not None else None
        held = sum(model.vram_bytes for model in manager.resident) if manager else 0
        return SimpleNamespace(total=gpu.total_bytes, free=gpu.total_bytes - held, used=held)


def _gpu_for_one(
    registry2: Registry, two_models: ModelFiles
) -> tuple[_GpuHoldingResidents, dict[str, int]]:
    """A GPU that holds all the layers of either model, not of both; and the VRAM each model
    takes with all its layers there."""
    roomy = simulated_probe(NvmlStandIn([SimulatedGpu("Big GPU", 64 * GIB, 64 * GIB)]))
    planner = LocalPlanner(TEST_SETTINGS, roomy)
    whole = {
        model_id: planner.plan(spec, two_models.resolve(spec)).estimate.vram_bytes
        for model_id, spec in ((m, registry2.get(m)) for m in (DEFAULT_ID, GEMMA_ID))
    }
    total = int(max(whole.values()) / (1 - GPU_SAFETY_FRACTION)) + 64 * MIB
    assert sum(whole.values()) > total * (1 - GPU_SAFETY_FRACTION)
    return _GpuHoldingResidents(total), whole


def _vram_of(server: RunningServer) -> dict[str, int]:
    models = server.client.get("/models/loaded").json()["models"]
    return {model["id"]: model["vram_bytes"] for model in models}


def test_an_idle_model_gives_way_for_the_vram_another_needs_but_a_busy_one_does_not(
    start: Any, registry2: Registry, two_models: ModelFiles
) -> None:
    gpu, whole = _gpu_for_one(registry2, two_models)
    server = start(hardware=simulated_probe(gpu))
    gpu.server = server
    assert _vram_of(server) == {DEFAULT_ID: whole[DEFAULT_ID]}  # alone: every layer on the GPU

    # Idle, the default model is unloaded so that every layer of Gemma goes to the GPU
    # (RAM and --max-models would have let both stay).
    assert generate(server, GEMMA_ID).status_code == 200
    assert _vram_of(server) == {GEMMA_ID: whole[GEMMA_ID]}
    metrics = server.client.get("/metrics").text
    assert f'locallab_model_unloads_total{{model="{DEFAULT_ID}",reason="make_room"}} 1.0' in metrics

    # Busy with a stream, Gemma stays; the default model loads beside it with the layers
    # that fit, instead of waiting for the stream to end.
    with server.client.stream(
        "POST", "/generate", json={**LONG, "model_id": GEMMA_ID, "stream": True}
    ) as stream:
        lines = stream.iter_lines()
        first_event(lines)
        assert generate(server, None).status_code == 200
        vram = _vram_of(server)
        events = sse_events(lines)
    assert events[-1] == "[DONE]"
    assert vram[GEMMA_ID] == whole[GEMMA_ID]
    assert vram[DEFAULT_ID] < whole[DEFAULT_ID]


def test_a_model_busy_with_a_stream_is_not_unloaded_the_load_waits_for_it(start: Any) -> None:
    # The load may wait as long as the stream takes, however slow the machine.
    server = start(Settings(**{**_settings(), "max_models": 1, "room_wait": 600.0}))
    expected = generate(server, None, **LONG).json()["response"]
    results: list[httpx.Response] = []
    with server.client.stream("POST", "/generate", json={**LONG, "stream": True}) as stream:
        lines = stream.iter_lines()
        first = first_event(lines)
        waiting = threading.Thread(
            target=lambda: results.append(generate(server, GEMMA_ID, timeout=None))
        )
        waiting.start()
        wait_until(
            lambda: server.services.manager.state_of(GEMMA_ID).status == "loading", timeout=600
        )
        assert resident_ids(server) == [DEFAULT_ID]  # still serving the stream
        events = sse_events([first, "", *lines])
    assert "".join(events[:-1]) == expected
    waiting.join()
    assert results[0].status_code == 200, results[0].text
    assert resident_ids(server) == [GEMMA_ID]


def test_a_load_that_only_a_busy_model_could_make_room_for_is_503_with_the_reason(
    start: Any,
) -> None:
    server = start(Settings(**{**_settings(), "max_models": 1, "room_wait": 0.0}))
    with server.client.stream("POST", "/generate", json={**LONG, "stream": True}) as stream:
        lines = stream.iter_lines()
        first_event(lines)
        refused = generate(server, GEMMA_ID)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        detail = refused.json()["detail"]
        assert f"only unloading {DEFAULT_ID!r} (" in detail and "in flight" in detail
        events = sse_events(lines)
    assert events[-1] == "[DONE]"
    assert resident_ids(server) == [DEFAULT_ID]


def test_keep_alive_0_unloads_the_model_when_the_request_ends(start: Any) -> None:
    server = start()
    served = generate(server, GEMMA_ID, keep_alive=0)
    assert served.status_code == 200
    wait_until(lambda: resident_ids(server) == [DEFAULT_ID], timeout=300)
    reply = server.client.post(
        "/v1/completions",
        json={"model": GEMMA_ID, "prompt": COUNTING, "max_tokens": 2, "keep_alive": "0s"},
    )
    assert reply.status_code == 200
    wait_until(lambda: resident_ids(server) == [DEFAULT_ID], timeout=300)
    bad = generate(server, GEMMA_ID, keep_alive="soon")
    assert bad.status_code == 400 and "keep_alive: 'soon' is not a duration" in bad.json()["detail"]


def test_keep_alive_2s_unloads_an_idle_model_in_time(start: Any) -> None:
    server = start(Settings(**{**_settings(), "keep_alive": "2s"}))
    assert generate(server, GEMMA_ID).status_code == 200
    loaded = {row["id"]: row for row in server.client.get("/models/loaded").json()["models"]}
    assert loaded[GEMMA_ID]["keep_alive_seconds"] == 2.0
    assert loaded[GEMMA_ID]["unload_at"] == pytest.approx(time.time() + 2, abs=1.5)
    assert loaded[DEFAULT_ID]["keep_alive_seconds"] is None  # the start-up model stays
    worker = worker_of(server, GEMMA_ID)
    wait_until(lambda: resident_ids(server) == [DEFAULT_ID], timeout=300)
    worker.wait(timeout=300)
    info = server.client.get("/system/info").json()["model"]["activity"]
    assert info[GEMMA_ID]["unloads"] == {"keep_alive": 1}


def test_a_corrupt_file_fails_its_load_and_the_other_model_keeps_serving(start: Any) -> None:
    server = start()
    expected = generate(server, None, **LONG).json()["response"]
    with server.client.stream("POST", "/generate", json={**LONG, "stream": True}) as stream:
        lines = stream.iter_lines()
        first = first_event(lines)
        failed = generate(server, BROKEN_ID)
        assert failed.status_code == 500
        assert (
            f"loading model {BROKEN_ID!r}" in failed.json()["detail"]
            or BROKEN_ID in (failed.json()["detail"])
        )
        events = sse_events([first, "", *lines])
    assert "".join(events[:-1]) == expected
    status = server.client.get(f"/models/status/{BROKEN_ID}").json()
    assert status["status"] == "failed" and status["error"]
    assert generate(server, None).status_code == 200


def test_a_worker_killed_with_sigsegv_leaves_the_other_models_streams_intact(start: Any) -> None:
    server = start()
    expected = generate(server, None, **LONG).json()["response"]
    assert generate(server, GEMMA_ID).status_code == 200
    gemma_worker = worker_of(server, GEMMA_ID)
    with server.client.stream("POST", "/generate", json={**LONG, "stream": True}) as stream:
        lines = stream.iter_lines()
        first = first_event(lines)
        os.kill(gemma_worker.pid, signal.SIGSEGV)
        events = sse_events([first, "", *lines])
    assert "".join(events[:-1]) == expected
    # Gemma's engine starts a new worker; then it serves again.
    wait_until(lambda: generate(server, GEMMA_ID).status_code == 200, timeout=300)


def test_unloading_a_model_ends_its_worker_process(start: Any) -> None:
    server = start()
    assert generate(server, GEMMA_ID).status_code == 200
    worker = worker_of(server, GEMMA_ID)
    unloaded = server.client.post("/models/unload", json={"model_id": GEMMA_ID})
    assert unloaded.json()["message"].startswith(f"model {GEMMA_ID!r} is unloaded")
    assert worker.wait(timeout=300) is not None
    assert resident_ids(server) == [DEFAULT_ID]
    # The default model is untouched: still the current one.
    assert server.client.get("/models/current").json()["id"] == DEFAULT_ID


def test_the_model_endpoints_show_each_models_state(start: Any) -> None:
    server = start()
    assert generate(server, GEMMA_ID).status_code == 200
    available = {
        m["id"]: m["is_loaded"] for m in server.client.get("/models/available").json()["models"]
    }
    assert available == {DEFAULT_ID: True, GEMMA_ID: True, BROKEN_ID: False}
    listed = {m["id"]: m["state"] for m in server.client.get("/v1/models").json()["data"]}
    assert listed == {DEFAULT_ID: "loaded", GEMMA_ID: "loaded", BROKEN_ID: "unloaded"}
    loaded = server.client.get("/models/loaded").json()
    assert loaded["default_model"] == DEFAULT_ID
    rows = {row["id"]: row for row in loaded["models"]}
    assert rows[DEFAULT_ID]["is_default"] and not rows[GEMMA_ID]["is_default"]
    assert rows[GEMMA_ID]["ram_bytes"] > rows[DEFAULT_ID]["ram_bytes"] > 0
    assert rows[GEMMA_ID]["slots_total"] == 4 and rows[GEMMA_ID]["requests_in_flight"] == 0
    # /models/load makes Gemma the default; the previous default stays, now on a keep-alive.
    assert server.client.post("/models/load", json={"model_id": GEMMA_ID}).status_code == 200
    assert server.client.get("/models/current").json()["id"] == GEMMA_ID
    rows = {row["id"]: row for row in server.client.get("/models/loaded").json()["models"]}
    assert rows[DEFAULT_ID]["keep_alive_seconds"] == 300.0 and rows[GEMMA_ID]["pinned"]
    answered = server.client.post("/generate", json=SHORT).json()
    assert answered["model"] == GEMMA_ID


def test_an_unknown_model_is_404_on_both_surfaces(start: Any) -> None:
    server = start()
    locallab = generate(server, "no-such-model")
    assert locallab.status_code == 404
    assert "'no-such-model' is not in" in locallab.json()["detail"]
    openai = server.client.post(
        "/v1/completions", json={"model": "no-such-model", "prompt": "Hi", "max_tokens": 2}
    )
    assert openai.status_code == 404
    error = openai.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["type"] == "not_found_error" and "'no-such-model'" in error["message"]
    assert server.client.get("/v1/models/no-such-model").status_code == 404


def test_without_autoload_a_model_not_loaded_is_503_with_retry_after(start: Any) -> None:
    server = start(Settings(**{**_settings(), "autoload": False}))
    refused = generate(server, GEMMA_ID)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert "--no-autoload" in refused.json()["detail"]
    assert server.client.post("/models/load", json={"model_id": GEMMA_ID}).status_code == 200
    assert generate(server, GEMMA_ID).status_code == 200


def test_the_v1_api_picks_the_model_each_request_names(start: Any) -> None:
    server = start()
    for model in (GEMMA_ID, DEFAULT_ID):
        reply = server.client.post(
            "/v1/completions", json={"model": model, "prompt": COUNTING, "max_tokens": 3}
        )
        assert reply.status_code == 200 and reply.json()["model"] == model


def _settings() -> dict[str, Any]:
    return {
        name: getattr(TEST_SETTINGS, name)
        for name in ("threads", "threads_batch", "ctx", "parallel", "rate_limit")
    }
