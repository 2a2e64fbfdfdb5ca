"""The engine in a supervised worker process: crashes, restarts, memory, and giving up."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import msgspec
import psutil

from locallab_gguf.engine.client import EngineClient
from locallab_gguf.engine.worker.process_runner import WorkerEngine, WorkerSpec
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.serving.loader import engine_config
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.reference import Reference
from tests.support.servers import RunningServer, wait_until

WORKER_SETTINGS = msgspec.structs.replace(TEST_SETTINGS, engine_isolation="process")
LONG = {"prompt": "Once upon a time", "max_length": 600, "temperature": 0}


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its parent counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def worker_pid(server: RunningServer) -> int:
    engine = server.services.manager.current.engine  # type: ignore[union-attr]
    assert isinstance(engine, WorkerEngine)
    assert engine.pid is not None
    return engine.pid


def opener_running(command: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """An engine opener whose worker is `command` (the real worker, or one that crashes)."""

    async def open_engine(spec: ModelSpec, path: Path) -> EngineClient:
        config = engine_config(WORKER_SETTINGS, spec)
        return await WorkerEngine.start(
            WorkerSpec(model_path=str(path), config=config, n_gpu_layers=0, command=command)
        )

    return open_engine


def crashing_after_first_start(tmp_path: Path) -> tuple[str, ...]:
    """A worker that starts for real once, then dies with SIGSEGV at every later start."""
    marker = tmp_path / "started-once"
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, signal, sys\n"
        f"marker = {str(marker)!r}\n"
        "if os.path.exists(marker):\n"
        "    os.kill(os.getpid(), signal.SIGSEGV)\n"
        "open(marker, 'w').close()\n"
        "from locallab_gguf.engine.worker.worker import main\n"
        "sys.exit(main(sys.argv))\n"
    )
    return (sys.executable, str(script))


def test_engine_runs_in_a_worker_process(make_server: ServerFactory, reference: Reference) -> None:
    server = make_server(WORKER_SETTINGS)
    pid = worker_pid(server)
    assert pid != os.getpid()
    assert psutil.Process(pid).ppid() == os.getpid()
    reply = server.client.post("/generate", json={**LONG, "max_length": 8})
    assert reply.status_code == 200
    assert reply.json()["response"] == reference.complete(LONG["prompt"], 8).text


def test_requests_while_restarting_get_503_with_retry_after(make_server: ServerFactory) -> None:
    server = make_server(WORKER_SETTINGS)
    os.kill(worker_pid(server), signal.SIGKILL)
    wait_until(lambda: server.client.get("/health").json()["model_status"] != "loaded")
    reply = server.client.post("/generate", json={**LONG, "max_length": 4})
    if reply.status_code == 503:  # unless the new worker was already up
        assert reply.headers["Retry-After"] == "2"
        assert "restarting" in reply.json()["detail"]
    server.wait_for_model("loaded")
    assert server.client.post("/generate", json={**LONG, "max_length": 4}).status_code == 200


def test_a_worker_that_keeps_crashing_while_loading_is_marked_failed(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server(
        WORKER_SETTINGS, opener=opener_running(crashing_after_first_start(tmp_path))
    )
    os.kill(worker_pid(server), signal.SIGSEGV)
    health = server.wait_for_model("failed", timeout=60)
    assert health["model"] is None
    info = server.client.get("/system/info").json()
    assert "killed by SIGSEGV while loading" in info["model"]["last_error"]
    assert "3 times in a row" in info["model"]["last_error"]
    reply = server.client.post("/generate", json={**LONG, "max_length": 4})
    assert reply.status_code == 503
    assert "3 times in a row" in reply.json()["detail"]


def test_loading_a_model_whose_worker_crashes_is_a_500_naming_the_signal(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    always_crashes = (
        sys.executable,
        "-c",
        "import os, signal; os.kill(os.getpid(), signal.SIGABRT)",
    )
    server = make_server(
        WORKER_SETTINGS,
        opener=opener_running(always_crashes),
        initial_model=None,
        wait_for="unloaded",
    )
    reply = server.client.post("/models/load", json={"model_id": DEFAULT_ID})
    assert reply.status_code == 500
    assert "killed by SIGABRT while loading" in reply.json()["detail"]
    assert server.client.get("/health").json()["model_status"] == "failed"


def test_unload_ends_the_worker_and_memory_returns(make_server: ServerFactory) -> None:
    server = make_server(WORKER_SETTINGS, initial_model=None, wait_for="unloaded")
    me = psutil.Process()
    before = me.memory_info().rss
    assert server.client.post("/models/load", json={"model_id": DEFAULT_ID}).status_code == 200
    pid = worker_pid(server)
    worker_rss = psutil.Process(pid).memory_info().rss
    assert server.client.post("/generate", json={**LONG, "max_length": 8}).status_code == 200
    assert server.client.post("/models/unload").status_code == 200
    wait_until(lambda: gone(pid), timeout=30)
    after = me.memory_info().rss
    assert worker_rss > 90 * 2**20  # the weights lived in the worker ...
    assert abs(after - before) <= 0.10 * before  # ... and the server is back where it was


def test_switching_models_starts_a_new_worker_and_the_old_one_exits(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    from tests.api.locallab.test_models import two_model_registry

    server = make_server(WORKER_SETTINGS, registry_=two_model_registry(tmp_path))
    old = worker_pid(server)
    assert server.client.post("/models/load", json={"model_id": "smollm2-twin"}).status_code == 200
    new = worker_pid(server)
    assert new != old
    # The previous default stays resident beside the new one until it is unloaded.
    assert not gone(old)
    unloaded = server.client.post("/models/unload", json={"model_id": DEFAULT_ID})
    assert unloaded.status_code == 200
    wait_until(lambda: gone(old))
