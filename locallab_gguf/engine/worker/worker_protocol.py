"""What the server and its engine worker process say to each other, and how it is framed.

Each message is a msgspec Struct, sent as msgpack behind a 4-byte length over a pipe.
Server -> worker: Start once, then Submit / Cancel, and Stop at the end; at any time between,
tokenizer calls (Tokenize / Pieces), each answered by a TokenizerReply.
Worker -> server: Ready (or LoadFailed) once, then SubmitReply and Events; every message after
Ready carries the engine's latest stats, so the server can report them without asking. Events
also carry the token each generating request produced, so that a request can be resumed on a
new worker if this one dies (resume.py).
"""

from __future__ import annotations

import contextlib
import os
import struct

import msgspec

from locallab_gguf.engine.types import (
    EncodeRequest,
    EncodeResult,
    EngineConfig,
    EngineInfo,
    EngineStats,
    Event,
    GenerationRequest,
)
from locallab_gguf.engine.worker.resume import Progress, Resume
from locallab_gguf.errors import (
    EngineFailure,
    InputTooLong,
    InvalidRequest,
    LocalLabError,
    ModelLoadFailed,
    Overloaded,
    PromptTooLong,
    RpcProtocolMismatch,
    RpcWorkerUnavailable,
)


class ActivityFile(msgspec.Struct, frozen=True):
    """The shared file the worker notes its activity in (activity.py), passed open."""

    fd: int
    lanes: int
    max_jobs: int


class Start(msgspec.Struct, frozen=True, tag=True):
    model_path: str
    config: EngineConfig
    n_gpu_layers: int
    log_level: str
    log_format: str = "text"  # the server's --log-format, so its log stays one format
    activity: ActivityFile | None = None


class Submit(msgspec.Struct, frozen=True, tag=True):
    job_id: int
    request: GenerationRequest
    resume: Resume | None = None  # set when the request continues after a crash
    # Only count the prompt's tokens: the reply carries the count and nothing is queued.
    count_only: bool = False


class Cancel(msgspec.Struct, frozen=True, tag=True):
    job_id: int


class Stop(msgspec.Struct, frozen=True, tag=True):
    """Finish what is in flight (drain) or cancel it, then exit."""

    drain: bool


# -- the model's tokenizer: each call is answered by one TokenizerReply with its call_id --


class Tokenize(msgspec.Struct, frozen=True, tag=True):
    call_id: int
    text: str
    add_special: bool
    parse_special: bool


class Pieces(msgspec.Struct, frozen=True, tag=True):
    """The bytes of each token (what /detokenize joins)."""

    call_id: int
    tokens: list[int]


class TokenizerReply(msgspec.Struct, frozen=True, tag=True):
    call_id: int
    stats: EngineStats
    tokens: list[int] = []  # Tokenize's answer
    pieces: list[bytes] = []  # Pieces' answer
    error: WireError | None = None


TokenizerCall = Tokenize | Pieces

# ----------------------------------------------------------------------------------------


# -- Embeddings and reranking: a request to encode and its answer ----------------------


class Encode(msgspec.Struct, frozen=True, tag=True):
    job_id: int
    request: EncodeRequest


class Encoded(msgspec.Struct, frozen=True, tag=True):
    job_id: int
    result: EncodeResult | None  # None when error is set
    error: WireError | None
    stats: EngineStats


# --------------------------------------------------------------------------------------

ToWorker = Start | Submit | Cancel | Stop | TokenizerCall | Encode


class WireError(msgspec.Struct, frozen=True):
    """A domain error that crossed the pipe; rebuilt as the same class on the other side."""

    kind: str
    message: str
    prompt_tokens: int = 0
    context_length: int = 0
    queued: int = 0
    retry_after: int = 0
    index: int = 0  # InputTooLong: which input


class Ready(msgspec.Struct, frozen=True, tag=True):
    info: EngineInfo
    stats: EngineStats


class LoadFailed(msgspec.Struct, frozen=True, tag=True):
    error: WireError


class SubmitReply(msgspec.Struct, frozen=True, tag=True):
    job_id: int
    prompt_tokens: int  # meaningful when error is None
    error: WireError | None
    stats: EngineStats


class Events(msgspec.Struct, frozen=True, tag=True):
    events: list[tuple[int, Event]]
    stats: EngineStats
    progress: list[Progress] = []


FromWorker = Ready | LoadFailed | SubmitReply | Events | TokenizerReply | Encoded

_HEADER = struct.Struct("<I")


class Channel:
    """One direction of a pipe, carrying length-prefixed msgpack messages."""

    def __init__(self, fd: int, message_type: type) -> None:
        self._fd = fd
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[object] = msgspec.msgpack.Decoder(message_type)

    def send(self, message: msgspec.Struct) -> None:
        payload = self._encoder.encode(message)
        data = memoryview(_HEADER.pack(len(payload)) + payload)
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def receive(self) -> object:
        """The next message; EOFError when the other end has closed or died."""
        (size,) = _HEADER.unpack(self._read_exactly(_HEADER.size))
        return self._decoder.decode(self._read_exactly(size))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _read_exactly(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = os.read(self._fd, min(size, 1 << 20))
            if not chunk:
                raise EOFError("the pipe closed")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


def error_to_wire(error: LocalLabError) -> WireError:
    if isinstance(error, InputTooLong):
        return WireError(
            "InputTooLong",
            str(error),
            prompt_tokens=error.prompt_tokens,
            context_length=error.context_length,
            index=error.index,
        )
    if isinstance(error, PromptTooLong):
        return WireError(
            "PromptTooLong",
            str(error),
            prompt_tokens=error.prompt_tokens,
            context_length=error.context_length,
        )
    if isinstance(error, Overloaded):
        return WireError(
            "Overloaded", str(error), queued=error.queued, retry_after=error.retry_after
        )
    # A subclass crosses as its nearest class the other side rebuilds, so the HTTP status,
    # decided by class hierarchy, is the same as when the engine runs on a thread.
    kind = next(
        (cls.__name__ for cls in type(error).__mro__ if cls.__name__ in _SIMPLE),
        "EngineFailure",
    )
    return WireError(kind, str(error))


def error_from_wire(wire: WireError) -> LocalLabError:
    if wire.kind == "InputTooLong":
        return InputTooLong(wire.index, wire.prompt_tokens, wire.context_length)
    if wire.kind == "PromptTooLong":
        return PromptTooLong(wire.prompt_tokens, wire.context_length)
    if wire.kind == "Overloaded":
        return Overloaded(wire.queued, wire.retry_after)
    return _SIMPLE.get(wire.kind, EngineFailure)(wire.message)


# Errors whose whole meaning is their class and message.
_SIMPLE: dict[str, type[LocalLabError]] = {
    cls.__name__: cls
    for cls in (
        InvalidRequest,
        EngineFailure,
        ModelLoadFailed,
        RpcWorkerUnavailable,
        RpcProtocolMismatch,
    )
}
