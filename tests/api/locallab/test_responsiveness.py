"""The server stays responsive while it generates, and lets go of clients that leave."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from pathlib import Path

import pytest

from locallab_gguf.engine.types import EngineConfig, GenerationRequest, SamplingParams
from locallab_gguf.engine.worker.thread_runner import open_local_engine
from tests.support.servers import RunningServer, wait_until

LONG = {"prompt": "Once upon a time", "max_length": 600, "temperature": 0}


def test_health_answers_fast_during_a_long_generation(server: RunningServer) -> None:
    with server.client.stream("POST", "/generate", json={**LONG, "stream": True}) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            assert server.client.get("/health").status_code == 200
            timings.append(time.perf_counter() - started)
        assert server.engine_stats().slots_busy == 1  # it really was generating throughout
    assert statistics.median(timings) < 0.05, timings


def test_engine_is_idle_within_200ms_after_a_streaming_client_hangs_up(
    server: RunningServer,
) -> None:
    with server.client.stream("POST", "/generate", json={**LONG, "stream": True}) as stream:
        lines = stream.iter_lines()
        for _ in range(3):
            next(line for line in lines if line.startswith("data:"))
        assert server.engine_stats().slots_busy == 1
    # Leaving the block closes the connection mid-stream.
    assert server.wait_until_idle(timeout=0.2) < 0.2
    finished_before = server.engine_stats().completion_tokens_total
    time.sleep(0.2)
    assert server.engine_stats().completion_tokens_total == finished_before


def test_engine_lets_go_of_a_non_streaming_client_that_hangs_up(server: RunningServer) -> None:
    body = b'{"prompt": "Once upon a time", "max_length": 600, "temperature": 0}'
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.sendall(
        b"POST /generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    wait_until(lambda: server.engine_stats().slots_busy == 1)
    raw.close()
    assert server.wait_until_idle(timeout=1.0) < 1.0


def test_a_generation_cancelled_while_its_prompt_is_read_never_runs_on(
    model_path: Path,
) -> None:
    """In-process engine: the client leaves while a thread is still reading its prompt. The
    thread cannot be stopped; once the engine has the request, it is cancelled, not run."""
    config = EngineConfig(n_ctx=512, n_parallel=2, n_threads=2, n_threads_batch=2)
    # A grammar with no end: the request runs to max_tokens on any CPU.
    request = GenerationRequest(
        prompt="Count from 1 to 100: 1, 2, 3,",
        max_tokens=64,
        sampling=SamplingParams(temperature=0, grammar='root ::= "1" root'),
    )

    async def scenario() -> tuple[int, int]:
        engine = await open_local_engine(model_path, config, 0)
        batch = engine.engine
        try:
            alone = await engine.generate(request)
            async for _ in alone:
                pass
            whole = batch.stats().completion_tokens_total
            # While the engine's lock is held the reading thread cannot queue the request.
            with batch._lock:
                task = asyncio.ensure_future(engine.generate(request))
                await asyncio.sleep(0.3)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            for _ in range(300):
                await asyncio.sleep(0.05)
                stats = batch.stats()
                if stats.slots_busy == 0 and stats.queue_depth == 0:
                    break
            return whole, batch.stats().completion_tokens_total - whole
        finally:
            await engine.close(drain=False)

    whole, after_cancel = asyncio.run(scenario())
    assert whole == request.max_tokens  # alone, the request runs its full length
    assert after_cancel < whole // 2
