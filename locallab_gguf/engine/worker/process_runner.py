"""An EngineClient whose engine runs in a supervised worker process.

The worker owns llama.cpp; this side owns the HTTP requests. A reader thread turns the
worker's messages into calls on the event loop. When the worker dies (a signal, an abort, the
OOM killer), the state becomes "restarting", a new worker loads the same model, and every
request in flight is resumed there from the tokens it had produced, but for the one that caused
the crash, which ends with a Failed event naming it (resume.py says how it is found). A worker
that keeps dying while it loads is given up on: the state becomes "failed", with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import msgspec

from locallab_gguf.engine.client import (
    SERVER_STOPPING,
    EngineState,
    RequestStream,
    StreamRouter,
)
from locallab_gguf.engine.encode.calls import EncodeCalls
from locallab_gguf.engine.rpc.protocol import parse_endpoint, probe
from locallab_gguf.engine.types import (
    EncodeRequest,
    EncodeResult,
    EngineConfig,
    EngineInfo,
    EngineStats,
    Failed,
    Finished,
    GenerationRequest,
)
from locallab_gguf.engine.worker import worker_protocol as wire
from locallab_gguf.engine.worker.activity import ActivityBlock, Note
from locallab_gguf.engine.worker.pending import PendingCalls, R
from locallab_gguf.engine.worker.resume import InFlightJobs
from locallab_gguf.engine.worker.worker_hooks import ACTIVITY_LANES
from locallab_gguf.errors import EngineFailure, EngineRestarting, LocalLabError, ModelLoadFailed

log = logging.getLogger(__name__)

# A worker that dies this many times in a row before it is ready is not started again.
MAX_LOAD_CRASHES = 3
# After a crash, how long an RPC worker may take to answer before it counts as lost.
LOST_WORKER_PROBE_S = 1.0
STOP_TIMEOUT_S = 60.0


WORKER_COMMAND = (sys.executable, "-m", "locallab_gguf.engine.worker.worker")


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    model_path: str
    config: EngineConfig
    n_gpu_layers: int
    log_level: str = "info"
    log_format: str = "text"
    # The program to run; it gets the two pipe descriptors as its last arguments.
    command: tuple[str, ...] = WORKER_COMMAND


class _Process:
    """One worker process and the pipes to it."""

    def __init__(self, spec: WorkerSpec) -> None:
        # Where the worker notes what it is doing, for the server to read after it died.
        self.activity = ActivityBlock.create(ACTIVITY_LANES, spec.config.n_parallel)
        to_worker_read, to_worker_write = os.pipe()
        from_worker_read, from_worker_write = os.pipe()
        try:
            self.popen = subprocess.Popen(
                [*spec.command, str(to_worker_read), str(from_worker_write)],
                pass_fds=(to_worker_read, from_worker_write, self.activity.fd),
                # Its own session: a Ctrl-C in the terminal reaches the server only, which
                # then drains and stops the worker in order.
                start_new_session=True,
            )
        finally:
            os.close(to_worker_read)
            os.close(from_worker_write)
        self.ready = False  # set once it has said Ready: only then is its death a crash
        self.outbox = wire.Channel(to_worker_write, wire.ToWorker)  # type: ignore[arg-type]
        self.inbox = wire.Channel(from_worker_read, wire.FromWorker)  # type: ignore[arg-type]
        self.send(
            wire.Start(
                model_path=spec.model_path,
                config=spec.config,
                n_gpu_layers=spec.n_gpu_layers,
                log_level=spec.log_level,
                log_format=spec.log_format,
                activity=wire.ActivityFile(
                    self.activity.fd, self.activity.lanes, self.activity.max_jobs
                ),
            )
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send(self, message: wire.ToWorker) -> None:
        with contextlib.suppress(OSError):  # it died; the reader thread reports that
            self.outbox.send(message)

    def exit_reason(self) -> str:
        code = self.popen.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the engine process was killed by {name}"
        return f"the engine process exited with status {code}"

    def close(self) -> None:
        self.outbox.close()
        self.inbox.close()
        self.activity.close()


class WorkerEngine(EncodeCalls):
    """EngineClient over a worker process; build it with `await WorkerEngine.start(spec)`."""

    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> None:
        self._spec = spec
        self._loop = loop
        self._streams = StreamRouter()
        self._inflight = InFlightJobs()  # what each request has produced, to resume it
        self._pending = PendingCalls(loop)  # every call waiting for the worker's reply
        self._process: _Process | None = None
        self._ready: asyncio.Future[wire.Ready] | None = None
        self._state: EngineState = "restarting"
        self._failure: str | None = None
        self._stats: EngineStats | None = None
        self._stopping = False
        self._restarting: asyncio.Task[None] | None = None
        self.info: EngineInfo
        self.restarts = 0

    @classmethod
    async def start(cls, spec: WorkerSpec) -> WorkerEngine:
        engine = cls(spec, asyncio.get_running_loop())
        await engine._launch_until_ready()
        return engine

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stats(self) -> EngineStats:
        assert self._stats is not None
        return self._stats

    async def count_tokens(self, request: GenerationRequest) -> int:
        answer = await self._call(
            wire.SubmitReply,
            lambda job_id: wire.Submit(job_id=job_id, request=request, count_only=True),
        )
        return answer.prompt_tokens

    async def _call(
        self, reply: type[R], make: Callable[[int], wire.ToWorker], *, cancellable: bool = False
    ) -> R:
        """Send the call `make` builds for a new id and wait for its reply, raising the error
        it carries. A `cancellable` call left by its client is cancelled in the worker too."""
        process = self._ready_process()
        call_id, answer = self._pending.open(reply)
        process.send(make(call_id))
        try:
            result = await answer
        except asyncio.CancelledError:
            if cancellable:
                self._cancel(call_id)  # the worker drops what is still queued for it
            raise
        finally:
            self._pending.forget(call_id)
        if result.error is not None:
            raise wire.error_from_wire(result.error)
        return result

    # -- the model's tokenizer ------------------------------------------------------------

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        reply = await self._call_tokenizer(
            lambda call_id: wire.Tokenize(call_id, text, add_special, parse_special)
        )
        return reply.tokens

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        reply = await self._call_tokenizer(lambda call_id: wire.Pieces(call_id, tokens))
        return reply.pieces

    async def _call_tokenizer(
        self, make: Callable[[int], wire.TokenizerCall]
    ) -> wire.TokenizerReply:
        return await self._call(wire.TokenizerReply, make)

    # -- embeddings and reranking ----------------------------------------------------------

    async def _encode(self, request: EncodeRequest) -> EncodeResult:
        encoded = await self._call(
            wire.Encoded,
            lambda job_id: wire.Encode(job_id=job_id, request=request),
            cancellable=True,
        )
        assert encoded.result is not None
        return encoded.result

    # --------------------------------------------------------------------------------------

    def activity(self) -> list[Note]:
        """What the running worker last noted it was doing (for tests: a crash's suspects)."""
        process = self._process
        return process.activity.read() if process is not None else []

    def _ready_process(self) -> _Process:
        process = self._process
        if self._state != "ready" or process is None:
            if self._state == "failed":
                raise EngineFailure(f"the engine has failed: {self._failure}")
            raise EngineRestarting(self._failure or "the engine is starting")
        return process

    async def generate(self, request: GenerationRequest) -> RequestStream:
        process = self._ready_process()
        job_id, reply = self._pending.open(wire.SubmitReply)
        queue = self._streams.open(job_id)
        self._inflight.add(job_id, request)
        process.send(wire.Submit(job_id=job_id, request=request))
        try:
            # If the worker dies first, the request is submitted again to the next one, and
            # this waits for that one's answer.
            answer = await reply
        except BaseException:
            self._pending.forget(job_id)
            self._cancel(job_id)
            raise
        if answer.error is not None:
            self._streams.close(job_id)
            self._inflight.forget(job_id)
            raise wire.error_from_wire(answer.error)
        return RequestStream(answer.prompt_tokens, queue, lambda: self._cancel(job_id))

    async def close(self, drain: bool) -> None:
        """Stop the worker: it finishes (drain) or cancels what is in flight, then exits."""
        self._stopping = True
        if self._restarting is not None:
            self._restarting.cancel()
        process = self._process
        if process is None:
            self._abandon_all(SERVER_STOPPING)
            return
        if not drain:
            self._abandon_all(SERVER_STOPPING)
        process.send(wire.Stop(drain=drain))
        try:
            await asyncio.wait_for(asyncio.to_thread(process.popen.wait), STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("the engine worker did not stop within %.0f s; killing it", STOP_TIMEOUT_S)
            process.popen.kill()
            await asyncio.to_thread(process.popen.wait)
        self._abandon_all(SERVER_STOPPING)

    def _cancel(self, job_id: int) -> None:
        self._streams.close(job_id)
        self._inflight.forget(job_id)
        if self._process is not None:
            self._process.send(wire.Cancel(job_id=job_id))

    def _end_job(self, job_id: int, detail: str) -> None:
        """End one request in flight with `detail`, whether or not it was taken yet."""
        self._inflight.forget(job_id)
        if not self._pending.fail(job_id, EngineFailure(detail)):
            self._streams.dispatch([(job_id, Failed(detail=detail))])

    def _abandon_all(self, detail: str) -> None:
        """End every request: generations in flight, and every other call waiting."""
        for job_id in self._inflight.take_all():
            self._end_job(job_id, detail)
        self._streams.fail_all(detail)
        self._fail_calls(detail)

    def _fail_calls(self, detail: str) -> None:
        """Calls that have nothing to resume (token counts, tokenizer calls, encodes) fail, and
        the client may ask again; generations in flight are left to resume or end."""
        self._pending.fail_all(lambda: EngineFailure(detail), keep=self._in_flight)

    def _in_flight(self, job_id: int) -> bool:
        return self._inflight.get(job_id) is not None

    # -- starting and restarting ---------------------------------------------------------

    async def _launch_until_ready(self) -> None:
        crashes = 0
        while True:
            try:
                await self._launch()
                return
            except _WorkerCrashed as crash:
                crashes += 1
                if crashes >= MAX_LOAD_CRASHES:
                    # The file's name only: the reason reaches clients, its directory the log.
                    log.error("%s while loading %s", crash.reason, self._spec.model_path)
                    file_name = os.path.basename(self._spec.model_path)
                    reason = f"{crash.reason} while loading {file_name}, {crashes} times in a row"
                    self._state, self._failure = "failed", reason
                    raise ModelLoadFailed(reason) from None
                log.warning("%s while loading; starting it again", crash.reason)
                await asyncio.sleep(0.2 * crashes)

    async def _launch(self) -> None:
        self._ready = self._loop.create_future()
        process = _Process(self._spec)
        self._process = process
        threading.Thread(
            target=self._read, args=(process,), name=f"engine-worker-{process.pid}", daemon=True
        ).start()
        started = time.monotonic()
        ready = await self._ready
        self.info = ready.info
        self._stats = ready.stats
        self._state, self._failure = "ready", None
        log.info("engine worker %d ready in %.1f s", process.pid, time.monotonic() - started)

    def _read(self, process: _Process) -> None:
        """The reader thread: worker messages -> the event loop, until the pipe closes."""
        deliver = self._loop.call_soon_threadsafe
        try:
            while True:
                message: wire.FromWorker = process.inbox.receive()  # type: ignore[assignment]
                deliver(self._on_message, process, message)
        except (EOFError, OSError):
            reason = process.exit_reason()
            notes = process.activity.read()
            process.close()
            with contextlib.suppress(RuntimeError):  # the loop is gone: the server exited
                deliver(self._on_exit, process, reason, notes)

    def _on_message(self, process: _Process, message: wire.FromWorker) -> None:
        if process is not self._process:
            return
        match message:
            case wire.Events(stats=stats, progress=progress, events=events):
                self._stats = stats
                if progress:
                    self._inflight.record(progress)
                if events:
                    for job_id, event in events:
                        if isinstance(event, Finished | Failed):
                            self._inflight.forget(job_id)
                    self._streams.dispatch(events)
            case wire.SubmitReply(job_id=job_id, error=error):
                self._stats = message.stats
                settled = self._pending.settle(job_id, message)
                if not settled and error is not None and self._in_flight(job_id):
                    # A resumed request the new worker refused.
                    self._end_job(job_id, str(wire.error_from_wire(error)))
            case wire.TokenizerReply(call_id=call_id) | wire.Encoded(job_id=call_id):
                self._stats = message.stats
                self._pending.settle(call_id, message)
            case wire.Ready():
                process.ready = True
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(message)
            case wire.LoadFailed(error=error) if self._ready and not self._ready.done():
                self._ready.set_exception(wire.error_from_wire(error))

    def _on_exit(self, process: _Process, reason: str, notes: list[Note]) -> None:
        if process is not self._process:
            return
        self._fail_calls(f"{reason}; retry the request")
        if not process.ready:
            # It died while loading. A clean refusal (LoadFailed) has already settled the
            # future; anything else is a crash.
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(_WorkerCrashed(reason))
            return
        if self._stopping:
            return
        self._process = None
        self._state, self._failure = "restarting", reason
        self.restarts += 1
        self._restarting = self._loop.create_task(self._recover(reason, notes))

    async def _recover(self, reason: str, notes: list[Note]) -> None:
        """Judge a crash of a ready worker, then restart it and resume what was in flight."""
        lost = await asyncio.to_thread(self._lost_workers)
        if lost:
            # llama.cpp aborts the process that loses a worker: no request is to blame.
            reason = f"{reason} after losing RPC worker {', '.join(lost)}"
            self._failure = reason
        verdict = self._inflight.judge_crash(reason, notes, blame=not lost)
        for job_id, detail in verdict.ended.items():
            self._end_job(job_id, detail)
        log.error(
            "%s; restarting it, then resuming %d requests that were in flight%s",
            reason,
            len(verdict.resumed),
            f" (ended as its likely cause: {sorted(verdict.ended)})" if verdict.ended else "",
        )
        await self._restart()

    def _lost_workers(self) -> list[str]:
        """The RPC workers of this model that do not answer now."""
        rpc = self._spec.config.rpc
        if rpc is None:
            return []
        lost = []
        for text in rpc.endpoints:
            try:
                probe(parse_endpoint(text), timeout_s=LOST_WORKER_PROBE_S)
            except LocalLabError:
                lost.append(text)
        return lost

    async def _restart(self) -> None:
        try:
            await self._launch_until_ready()
        except LocalLabError as exc:
            self._state, self._failure = "failed", str(exc)
            log.error("the engine could not be restarted: %s", exc)
            self._abandon_all(f"the engine could not be restarted: {exc}")
            return
        self._resubmit()

    def _resubmit(self) -> None:
        """Send every request that was in flight to the new worker, oldest first."""
        process = self._process
        assert process is not None
        for job_id in self._inflight.ids():
            job = self._inflight.get(job_id)
            assert job is not None
            process.send(wire.Submit(job_id=job_id, request=job.request, resume=job.resume()))


class _WorkerCrashed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
