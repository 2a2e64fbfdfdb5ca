"""The encoding engine: embedding and reranker models in llama.cpp's embeddings mode.

Requests are tokenized on the caller's thread; their inputs then wait in one queue, and the
engine thread packs as many as fit (tokens up to the batch size, sequences up to the
context's sequence count) into each `llama_decode`, whatever request they came from, and reads
one pooled vector per sequence with `llama_get_embeddings_seq`. A request's answer goes to its
callback, on the engine thread, once its last input is done.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import numpy as np

from locallab_gguf.engine.runtime.llama import LlamaModel
from locallab_gguf.engine.types import (
    Accepted,
    EmbeddingMode,
    EmbeddingRequest,
    Embeddings,
    EncodeRequest,
    EncodeResult,
    EngineConfig,
    EngineInfo,
    EngineStats,
    GenerationRequest,
    Pooling,
    Rankings,
    RerankRequest,
)
from locallab_gguf.engine.worker.resume import Resume
from locallab_gguf.errors import (
    EngineFailure,
    InputTooLong,
    InvalidRequest,
    LocalLabError,
    ModelLoadFailed,
    Overloaded,
    WrongModelKind,
)

log = logging.getLogger(__name__)

Answer = Callable[[EncodeResult | LocalLabError], None]

# Sequences one decode may carry: enough for a few dozen short sentences from concurrent
# clients to share one pass over the weights.
MIN_SEQUENCES_PER_DECODE = 64
# Tokens one decode takes (more when a single input is longer). A decode cannot be stopped
# once begun, so its length is how long a client behind a large request (or behind one whose
# client left) waits; 512-token batches already run at full prompt speed on a CPU, while one
# decode of 440 tokens took 25 s on a busy two-core machine, and a whole 4,096-token context
# would take about nine times that.
DECODE_TOKENS = 512

_POOLING_CODES: dict[Pooling, int] = {
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
    "rank": llama_cpp.LLAMA_POOLING_TYPE_RANK,
}
_POOLING_NAMES = {code: name for name, code in _POOLING_CODES.items()}


class _Job:
    """One request's inputs on their way through the decodes."""

    def __init__(
        self, job_id: int, request: EncodeRequest, count: int, tokens: int, answer: Answer
    ) -> None:
        self.id = job_id
        self.request = request
        self.rows: list[np.ndarray | None] = [None] * count
        self.remaining = count
        self.tokens = tokens
        self.answer = answer
        # Answered with an error, or cancelled: rows its inputs still produce are dropped.
        self.ended = False


class _Input:
    __slots__ = ("index", "job", "tokens")

    def __init__(self, job: _Job, index: int, tokens: list[int]) -> None:
        self.job = job
        self.index = index
        self.tokens = tokens


class EmbeddingEngine:
    """Encodes with one llama.cpp context in embeddings mode, on a thread of its own."""

    def __init__(
        self,
        model: LlamaModel,
        config: EngineConfig,
        mode: EmbeddingMode,
        *,
        owns_model: bool = True,
    ) -> None:
        """`owns_model` False: the model is a chat engine's too (chat_encoder.py), and
        outlives this engine."""
        self.model = model
        self._owns_model = owns_model
        self.mode = mode
        self.config = config
        trained = model.n_ctx_train
        self.max_input_tokens = config.encoder_input_tokens(trained)
        self.n_batch = config.encoder_context(trained)
        self.n_seq_max = min(
            max(config.n_parallel, MIN_SEQUENCES_PER_DECODE),
            int(llama_cpp.llama_max_parallel_sequences()),
        )
        self._ctx = self._open_context(config)
        self.pooling = self._check_pooling()
        self.dimensions = (
            max(int(llama_cpp.llama_model_n_cls_out(model.handle)), 1)
            if self.pooling == "rank"
            else int(llama_cpp.llama_model_n_embd_out(model.handle))
        )
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._memory = llama_cpp.llama_get_memory(self._ctx)  # None for encoder-only models
        self.info = EngineInfo(
            context_length=self.max_input_tokens,
            trained_context_length=trained,
            n_layer=model.n_layer,
            n_gpu_layers=model.n_gpu_layers,
            model_size_bytes=model.size_bytes,
            chat_template_source=None,
            parallel=self.n_seq_max,
            n_vocab=model.n_vocab,
            kv_shape=(self.n_batch, 1),
            rpc=config.rpc,
        )
        self._lock = threading.Condition()
        self._queue: collections.deque[_Input] = collections.deque()
        self._jobs: dict[int, _Job] = {}  # by id, until answered or cancelled
        self._closing = False
        self._drain = True
        self._prompt_tokens_total = 0
        self._requests_finished = 0
        self._decodes = 0
        self._busy = 0
        self._thread = threading.Thread(target=self._run, name="embedding-engine", daemon=True)
        self._thread.start()

    # -- the calling side --------------------------------------------------------------

    def submit_encode(self, job_id: int, request: EncodeRequest, answer: Answer) -> None:
        """Tokenize and queue; `answer` gets the result (or the error) from the engine thread,
        unless `cancel(job_id)` comes first. Errors found before queueing (bad input, too long,
        overloaded) are raised here."""
        if isinstance(request, RerankRequest):
            if self.pooling != "rank":
                raise WrongModelKind(
                    "this model is an embedding model: it answers /v1/embeddings, not "
                    '/v1/rerank; load a reranker model (models.toml kind = "reranker")'
                )
            sequences = [self._rerank_tokens(request.query, doc) for doc in request.documents]
        else:
            if self.pooling == "rank":
                raise WrongModelKind(
                    "this model is a reranker: it answers /v1/rerank, not embeddings; load an "
                    'embedding model (models.toml kind = "embedding")'
                )
            if request.dimensions is not None and request.dimensions > self.dimensions:
                raise InvalidRequest(
                    f"dimensions is {request.dimensions}; this model's vectors have "
                    f"{self.dimensions}"
                )
            sequences = [
                self._input_tokens(index, item) for index, item in enumerate(request.inputs)
            ]
        if not sequences:
            raise InvalidRequest("there is nothing to encode: the request holds no input")
        sequences = [
            self._fitted(index, tokens, request.truncate) for index, tokens in enumerate(sequences)
        ]
        job = _Job(job_id, request, len(sequences), sum(map(len, sequences)), answer)
        with self._lock:
            if self._closing:
                raise EngineFailure("the engine is stopping")
            if len(self._jobs) >= self.config.queue_size:
                raise Overloaded(len(self._jobs), retry_after=1)
            self._jobs[job_id] = job
            self._queue.extend(_Input(job, index, tokens) for index, tokens in enumerate(sequences))
            self._lock.notify()

    @property
    def decodes(self) -> int:
        """Decodes run so far: fewer than the inputs when requests arrive together."""
        return self._decodes

    def submit(
        self, job_id: int, request: GenerationRequest, resume: Resume | None = None
    ) -> Accepted:
        raise WrongModelKind(self._not_for_generation())

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        raise WrongModelKind(self._not_for_generation())

    def cancel(self, job_id: int) -> None:
        """Drop a request whose client left: its queued inputs are not encoded, and it gets no
        answer. Inputs in the decode running now finish with it and are thrown away."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return  # answered already, or never queued
            dropped = self._end_locked(job)
        log.info(
            "encoding request %d cancelled: %d of its %d inputs were still queued",
            job_id,
            dropped,
            len(job.rows),
        )

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                slots_total=self.n_seq_max,
                slots_busy=self._busy,
                queue_depth=len(self._queue),
                queue_capacity=self.config.queue_size,
                context_size=self.n_batch,
                context_used=0,
                prompt_tokens_total=self._prompt_tokens_total,
                prompt_tokens_evaluated=self._prompt_tokens_total,
                completion_tokens_total=0,
                requests_finished=self._requests_finished,
                tokens_per_second=0.0,
            )

    def close(self, drain: bool) -> None:
        with self._lock:
            self._closing = True
            self._drain = drain
            self._lock.notify_all()
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        if self._owns_model:
            self.model.close()

    def _not_for_generation(self) -> str:
        kind = "a reranker" if self.pooling == "rank" else "an embedding model"
        endpoint = "/v1/rerank" if self.pooling == "rank" else "/v1/embeddings"
        return (
            f"this model is {kind}: it does not generate text; send it to {endpoint}, or name "
            "a chat model for generation"
        )

    # -- tokens ------------------------------------------------------------------------

    def _input_tokens(self, index: int, item: str | tuple[int, ...]) -> list[int]:
        if isinstance(item, str):
            tokens = self.model.tokenize(item, add_special=True, parse_special=False)
        else:
            tokens = list(item)
            bad = next((t for t in tokens if not 0 <= t < self.model.n_vocab), None)
            if bad is not None:
                raise InvalidRequest(
                    f"input {index} holds token id {bad}; this model's ids run from 0 to "
                    f"{self.model.n_vocab - 1}"
                )
        if not tokens:
            raise InvalidRequest(f"input {index} is empty: there is nothing to embed")
        return tokens

    def _rerank_tokens(self, query: str, document: str) -> list[int]:
        # As llama.cpp's server pairs them: the GGUF's "rerank" template when it has one, else
        # [BOS] query [EOS] [SEP] document [EOS] with each special where the vocabulary adds it.
        model, vocab = self.model, self.model.vocab
        template = llama_cpp.llama_model_chat_template(model.handle, b"rerank")
        if template:
            text = template.decode("utf-8", errors="replace")
            text = text.replace("{query}", query).replace("{document}", document)
            return model.tokenize(text, add_special=False, parse_special=True)
        eos = int(llama_cpp.llama_vocab_eos(vocab))
        if eos < 0:
            eos = int(llama_cpp.llama_vocab_sep(vocab))
        add_eos = bool(llama_cpp.llama_vocab_get_add_eos(vocab))
        tokens: list[int] = []
        if llama_cpp.llama_vocab_get_add_bos(vocab):
            tokens.append(int(llama_cpp.llama_vocab_bos(vocab)))
        tokens += model.tokenize(query, add_special=False, parse_special=False)
        if add_eos:
            tokens.append(eos)
        if llama_cpp.llama_vocab_get_add_sep(vocab):
            tokens.append(int(llama_cpp.llama_vocab_sep(vocab)))
        tokens += model.tokenize(document, add_special=False, parse_special=False)
        if add_eos:
            tokens.append(eos)
        return tokens

    def _fitted(self, index: int, tokens: list[int], truncate: bool) -> list[int]:
        limit = self.max_input_tokens
        if len(tokens) <= limit:
            return tokens
        if not truncate:
            raise InputTooLong(index, len(tokens), limit)
        return tokens[:limit]

    # -- the engine thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if self._closing and (not self._queue or not self._drain):
                    abandoned = list(self._queue)
                    self._queue.clear()
                    break
                taken = self._take()
                self._busy = len(taken)
            try:
                self._decode(taken)
            except Exception as exc:  # never leave a request unanswered
                log.exception("an embedding decode failed")
                for job in {item.job for item in taken}:
                    self._fail(job, EngineFailure(f"the embedding decode failed: {exc}"))
            finally:
                with self._lock:
                    self._busy = 0
        for job in {item.job for item in abandoned}:
            self._fail(job, EngineFailure("the server is stopping; the request did not finish"))

    def _take(self) -> list[_Input]:
        """The next inputs in order, as many as one decode holds."""
        taken: list[_Input] = []
        tokens = 0
        budget = min(self.n_batch, max(DECODE_TOKENS, len(self._queue[0].tokens)))
        while self._queue and len(taken) < self.n_seq_max:
            size = len(self._queue[0].tokens)
            if tokens + size > budget:
                break
            taken.append(self._queue.popleft())
            tokens += size
        return taken

    def _decode(self, taken: list[_Input]) -> None:
        batch = self._batch
        n = 0
        for seq, item in enumerate(taken):
            for pos, token in enumerate(item.tokens):
                batch.token[n] = token
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                # Pooling reads every token's output: all are marked, as llama.cpp requires.
                batch.logits[n] = True
                n += 1
        batch.n_tokens = n
        if self._memory:
            llama_cpp.llama_memory_clear(self._memory, True)
        code = llama_cpp.llama_decode(self._ctx, batch)
        if code != 0:
            raise EngineFailure(f"llama_decode returned {code}")
        self._decodes += 1
        finished: list[_Job] = []
        for seq, item in enumerate(taken):
            pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)
            if not pointer:
                raise EngineFailure("llama.cpp gave no pooled vector for a sequence")
            row = np.ctypeslib.as_array(
                ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.dimensions,)
            ).copy()
            job = item.job
            job.rows[item.index] = row
            job.remaining -= 1
            if job.remaining == 0:
                finished.append(job)
        for job in finished:
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        with self._lock:
            if job.ended:
                return
            del self._jobs[job.id]
            self._requests_finished += 1
            self._prompt_tokens_total += job.tokens
        rows = np.stack([row for row in job.rows if row is not None])
        request = job.request
        result: EncodeResult
        if isinstance(request, RerankRequest):
            result = Rankings(scores=tuple(float(s) for s in rows[:, 0]), prompt_tokens=job.tokens)
        else:
            result = _embeddings(rows, request, job.tokens)
        job.answer(result)

    def _fail(self, job: _Job, error: LocalLabError) -> None:
        with self._lock:
            if job.ended:
                return
            self._end_locked(job)
        job.answer(error)

    def _end_locked(self, job: _Job) -> int:
        """Forget the job and its inputs still queued (those already decoded are simply
        dropped); returns how many were queued."""
        job.ended = True
        del self._jobs[job.id]
        before = len(self._queue)
        self._queue = collections.deque(item for item in self._queue if item.job is not job)
        return before - len(self._queue)

    # -- loading -----------------------------------------------------------------------

    def _open_context(self, config: EngineConfig) -> object:
        params = llama_cpp.llama_context_default_params()
        params.embeddings = True
        params.n_ctx = self.n_batch
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = self.n_seq_max
        params.kv_unified = True  # cleared before every decode: one batch's worth is enough
        params.n_threads = config.n_threads
        # Inputs are short and decoded once: flash attention's CPU path is slower for them
        # (and bare llama-cpp-python leaves it off, which makes its vectors our reference).
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_threads_batch = config.n_threads_batch
        params.pooling_type = (
            _POOLING_CODES[self.mode.pooling]
            if self.mode.pooling is not None
            else llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
        )
        ctx = llama_cpp.llama_init_from_model(self.model.handle, params)
        if not ctx:
            raise ModelLoadFailed(
                f"llama.cpp could not create an embeddings context for {self.model.path.name} "
                "(see the server log for its reason)"
            )
        return ctx

    def _check_pooling(self) -> Pooling:
        code = int(llama_cpp.llama_pooling_type(self._ctx))
        pooling = _POOLING_NAMES.get(code)
        wanted_rank = self.mode.kind == "reranker"
        problem = None
        if pooling is None:
            problem = (
                'its GGUF declares no pooling; set pooling = "mean" (or "cls", "last") '
                "for it in models.toml"
            )
        elif wanted_rank and pooling != "rank":
            problem = (
                f"it is registered as a reranker but pools by {pooling!r}; a reranker GGUF "
                'has a classifier head (pooling "rank")'
            )
        elif not wanted_rank and pooling == "rank":
            problem = 'it is a reranker (rank pooling); register it with kind = "reranker"'
        if problem is not None:
            llama_cpp.llama_free(self._ctx)
            raise ModelLoadFailed(f"{self.model.path.name} cannot serve embeddings: {problem}")
        assert pooling is not None
        log.info(
            "embedding engine: %s pooling, up to %d tokens an input, %d sequences a decode",
            pooling,
            self.max_input_tokens,
            self.n_seq_max,
        )
        return pooling


def _embeddings(rows: np.ndarray, request: EmbeddingRequest, tokens: int) -> Embeddings:
    if request.dimensions is not None:
        rows = rows[:, : request.dimensions]
    if request.normalize:
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = rows / np.where(norms > 0, norms, 1.0)
    vectors = np.ascontiguousarray(rows, dtype="<f4")
    return Embeddings(
        vectors=vectors.tobytes(),
        count=vectors.shape[0],
        dimensions=vectors.shape[1],
        prompt_tokens=tokens,
    )


def open_embedding_engine(
    path: Path, n_gpu_layers: int, config: EngineConfig, mode: EmbeddingMode
) -> EmbeddingEngine:
    started = time.monotonic()
    model = LlamaModel(path, n_gpu_layers, rpc=config.rpc)
    try:
        engine = EmbeddingEngine(model, config, mode)
    except BaseException:
        model.close()
        raise
    log.info("embedding model %s loaded in %.1f s", path.name, time.monotonic() - started)
    return engine
