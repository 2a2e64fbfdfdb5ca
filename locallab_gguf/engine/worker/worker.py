"""The engine worker process: one model, one batching engine, driven over two pipes.

    python -m locallab_gguf.engine.worker.worker <fd to read commands> <fd to write events>

llama.cpp is native code; when it crashes, it takes only this process with it. The server
notices the closed pipe, starts a new worker and resumes the requests that were in flight there,
but for the one the worker's activity notes blame for the crash (resume.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from locallab_gguf.engine.encode.embedding import EmbeddingEngine, open_embedding_engine
from locallab_gguf.engine.runtime.scheduler import BatchEngine, open_batch_engine
from locallab_gguf.engine.runtime.tokenizer import token_pieces, tokenize_text
from locallab_gguf.engine.types import EncodeResult, EventBatch, RerankRequest
from locallab_gguf.engine.worker import worker_protocol as wire
from locallab_gguf.engine.worker.activity import ActivityBlock
from locallab_gguf.engine.worker.thread_runner import NOT_AN_ENCODER
from locallab_gguf.engine.worker.worker_hooks import CRASH_MARKER_ENV, SUBMIT_THREADS, WorkerHooks
from locallab_gguf.errors import EngineFailure, LocalLabError, WrongModelKind
from locallab_gguf.log_format import configure_logging

log = logging.getLogger("locallab_gguf.engine.worker.worker")

_PR_SET_PDEATHSIG = 1


def _die_with_the_server() -> None:
    # If the server is killed outright, the kernel ends this process too: no orphan keeps a
    # model in memory. (Linux only; elsewhere the closed command pipe ends the worker.)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Worker:
    def __init__(self, inbox: wire.Channel, outbox: wire.Channel) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._send_lock = threading.Lock()
        self._engine: BatchEngine | EmbeddingEngine | None = None
        self._hooks = WorkerHooks(None)
        self._submitters = ThreadPoolExecutor(
            max_workers=SUBMIT_THREADS, thread_name_prefix="submit"
        )
        # Requests a submit thread is still reading, and those of them whose Cancel came
        # meanwhile: the engine does not know them yet, so their cancel waits until it does.
        self._taking_lock = threading.Lock()
        self._taking: set[int] = set()
        self._cancelled_while_taking: set[int] = set()

    def send(self, message: wire.FromWorker) -> None:
        with self._send_lock:
            self._outbox.send(message)

    def run(self) -> int:
        start = self._inbox.receive()
        if not isinstance(start, wire.Start):
            raise RuntimeError(f"expected Start, got {type(start).__name__}")
        configure_logging(start.log_level, "json" if start.log_format == "json" else "text")
        activity = start.activity
        self._hooks = WorkerHooks(
            None
            if activity is None
            else ActivityBlock.attach(activity.fd, activity.lanes, activity.max_jobs),
            crash_marker=os.environ.get(CRASH_MARKER_ENV),
        )
        try:
            if start.config.embedding is not None:
                self._engine = open_embedding_engine(
                    Path(start.model_path),
                    start.n_gpu_layers,
                    start.config,
                    start.config.embedding,
                )
            else:
                self._engine = open_batch_engine(
                    Path(start.model_path),
                    start.n_gpu_layers,
                    start.config,
                    self._on_step,
                    self._hooks,
                )
        except LocalLabError as exc:
            self.send(wire.LoadFailed(error=wire.error_to_wire(exc)))
            return 1
        engine = self._engine
        self.send(wire.Ready(info=engine.info, stats=engine.stats()))
        log.info("engine worker ready: %s", start.model_path)
        return self._serve(engine)

    def _serve(self, engine: BatchEngine | EmbeddingEngine) -> int:
        while True:
            try:
                message: wire.ToWorker = self._inbox.receive()  # type: ignore[assignment]
            except EOFError:
                log.warning("the server went away; the engine worker stops")
                engine.close(drain=False)
                return 0
            if isinstance(message, wire.Submit):
                self._taking_in(message.job_id)
                self._submitters.submit(self._submit, engine, message)
            elif isinstance(message, wire.Cancel):
                self._cancel(engine, message.job_id)
            elif isinstance(message, wire.Tokenize | wire.Pieces):
                self._submitters.submit(self._tokenizer_call, engine, message)
            elif isinstance(message, wire.Encode):
                self._taking_in(message.job_id)
                self._submitters.submit(self._encode, engine, message)
            elif isinstance(message, wire.Stop):
                self._submitters.shutdown(wait=True)
                engine.close(drain=message.drain)
                return 0

    def _taking_in(self, job_id: int) -> None:
        with self._taking_lock:
            self._taking.add(job_id)

    def _cancel(self, engine: BatchEngine | EmbeddingEngine, job_id: int) -> None:
        with self._taking_lock:
            if job_id in self._taking:
                self._cancelled_while_taking.add(job_id)
        engine.cancel(job_id)

    def _taken(self, engine: BatchEngine | EmbeddingEngine, job_id: int) -> None:
        """The engine has the request (or refused it): a cancel that came meanwhile applies."""
        with self._taking_lock:
            self._taking.discard(job_id)
            cancelled = job_id in self._cancelled_while_taking
            self._cancelled_while_taking.discard(job_id)
        if cancelled:
            engine.cancel(job_id)

    def _encode(self, engine: BatchEngine | EmbeddingEngine, message: wire.Encode) -> None:
        """Queue an embedding or rerank request; its answer is sent when it is done."""

        def answer(outcome: EncodeResult | LocalLabError) -> None:
            stats = engine.stats()
            if isinstance(outcome, LocalLabError):
                self.send(wire.Encoded(message.job_id, None, wire.error_to_wire(outcome), stats))
            else:
                self.send(wire.Encoded(message.job_id, outcome, None, stats))

        try:
            if isinstance(engine, EmbeddingEngine):
                encoder = engine
            elif isinstance(message.request, RerankRequest):
                raise WrongModelKind(NOT_AN_ENCODER)
            else:
                encoder = engine.encoder.engine()  # a chat model embeds too
            encoder.submit_encode(message.job_id, message.request, answer)
        except LocalLabError as exc:
            answer(exc)
        except Exception as exc:  # never leave the server waiting for an answer
            log.exception("encode failed")
            answer(EngineFailure(f"the engine could not take the request: {exc}"))
        finally:
            self._taken(engine, message.job_id)

    def _submit(self, engine: BatchEngine | EmbeddingEngine, message: wire.Submit) -> None:
        try:
            with self._hooks.preparing(message.job_id, message.request):
                if message.count_only:
                    prompt_tokens = engine.count_prompt_tokens(message.request)
                else:
                    accepted = engine.submit(message.job_id, message.request, message.resume)
                    prompt_tokens = accepted.prompt_tokens
            reply = wire.SubmitReply(
                job_id=message.job_id,
                prompt_tokens=prompt_tokens,
                error=None,
                stats=engine.stats(),
            )
        except LocalLabError as exc:
            reply = wire.SubmitReply(message.job_id, 0, wire.error_to_wire(exc), engine.stats())
        except Exception as exc:  # never leave the server waiting for an answer
            log.exception("submit failed")
            failure = EngineFailure(f"the engine could not take the request: {exc}")
            reply = wire.SubmitReply(message.job_id, 0, wire.error_to_wire(failure), engine.stats())
        self._taken(engine, message.job_id)
        self.send(reply)

    def _tokenizer_call(
        self, engine: BatchEngine | EmbeddingEngine, message: wire.TokenizerCall
    ) -> None:
        try:
            if isinstance(message, wire.Tokenize):
                tokens = tokenize_text(
                    engine.model,
                    message.text,
                    add_special=message.add_special,
                    parse_special=message.parse_special,
                )
                reply = wire.TokenizerReply(message.call_id, engine.stats(), tokens=tokens)
            else:
                pieces = token_pieces(engine.model, message.tokens)
                reply = wire.TokenizerReply(message.call_id, engine.stats(), pieces=pieces)
        except LocalLabError as exc:
            reply = wire.TokenizerReply(
                message.call_id, engine.stats(), error=wire.error_to_wire(exc)
            )
        except Exception as exc:  # never leave the server waiting for an answer
            log.exception("tokenizer call failed")
            failure = EngineFailure(f"the tokenizer failed: {exc}")
            reply = wire.TokenizerReply(
                message.call_id, engine.stats(), error=wire.error_to_wire(failure)
            )
        self.send(reply)

    def _on_step(self, events: EventBatch) -> None:
        engine = self._engine
        if engine is not None:
            progress = self._hooks.take_progress()
            self.send(wire.Events(events=events, stats=engine.stats(), progress=progress))


def main(argv: list[str]) -> int:
    _die_with_the_server()
    # Ctrl-C in a terminal is the server's to handle: it drains, then stops this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inbox = wire.Channel(int(argv[1]), wire.ToWorker)  # type: ignore[arg-type]
    outbox = wire.Channel(int(argv[2]), wire.FromWorker)  # type: ignore[arg-type]
    try:
        return Worker(inbox, outbox).run()
    except EOFError:
        return 0
    finally:
        outbox.close()
        inbox.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
