"""Ollama's API under /api: generate, chat, tags, show, ps, pull, delete, version.

Streams are NDJSON (one JSON object per line), the last one `done: true` with Ollama's counts
and durations in nanoseconds; `stream: false` answers that last object with the whole text.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from locallab_gguf import __version__
from locallab_gguf.api.common.answers import error_body, stream_media_type
from locallab_gguf.api.common.fields import arguments_object
from locallab_gguf.api.common.listing import context_length_of, exact_aliases
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.common.sse import (
    EventStream,
    chunked_stream,
    collect_events,
    unless_client_leaves,
)
from locallab_gguf.api.ollama.embed import embed_inputs, embed_prompt
from locallab_gguf.api.ollama.errors import OLLAMA_EXCEPTION_HANDLERS
from locallab_gguf.api.ollama.requests import (
    generation_of,
    is_load_only,
    model_id_of,
    ollama_name,
    refuse_unsupported,
)
from locallab_gguf.api.ollama.wire import (
    AssistantMessage,
    ChatChunk,
    ChatRequest,
    DoneReason,
    ErrorBody,
    FunctionCall,
    GenerateChunk,
    GenerateRequest,
    ListedModel,
    ModelDetails,
    ModelRequest,
    PsResponse,
    PullProgress,
    RunningModel,
    ShowResponse,
    TagsResponse,
    Timings,
    ToolCallBody,
    VersionResponse,
)
from locallab_gguf.durations import keep_alive_seconds
from locallab_gguf.engine.types import (
    Event,
    Failed,
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallArguments,
    ToolCallStarted,
)
from locallab_gguf.errors import (
    LoadCancelled,
    ModelNotFound,
    UnsupportedParameter,
)
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.placement.gguf_facts import GgufFacts, gguf_facts
from locallab_gguf.serving.footprint import loaded_footprint
from locallab_gguf.serving.resident import ResidentModel

NDJSON = "application/x-ndjson"
# What /api/ps shows for a model that stays until it is unloaded.
NEVER_EXPIRES = "2318-01-01T00:00:00Z"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _line(body: msgspec.Struct) -> bytes:
    return msgspec.json.encode(body) + b"\n"


class _Clock:
    """Ollama's durations: from the request's arrival, to the first token, to the end."""

    def __init__(self) -> None:
        self.started = time.monotonic_ns()
        self.wall_started = time.time_ns()
        self.first: int | None = None
        self.load_ns = 0  # set when the request had to wait for its model to load

    def mark_first(self) -> None:
        if self.first is None:
            self.first = time.monotonic_ns()

    def timings(self, finished: Finished) -> Timings:
        now = time.monotonic_ns()
        first = self.first or now
        return Timings(
            total_duration=now - self.started,
            load_duration=self.load_ns,
            prompt_eval_count=finished.usage.prompt_tokens,
            prompt_eval_duration=first - self.started,
            eval_count=finished.usage.completion_tokens,
            eval_duration=now - first,
        )


def _done_reason(finished: Finished) -> DoneReason:
    return "length" if finished.finish_reason == "length" else "stop"


class _Calls:
    """Tool calls as the engine streams them (opened, then arguments in pieces), gathered into
    Ollama's form: whole calls with their arguments as objects."""

    def __init__(self) -> None:
        self._names: dict[int, str] = {}
        self._arguments: dict[int, list[str]] = {}

    def feed(self, event: Event) -> bool:
        if isinstance(event, ToolCallStarted):
            self._names[event.index] = event.name
            self._arguments[event.index] = []
            return True
        if isinstance(event, ToolCallArguments):
            self._arguments[event.index].append(event.text)
            return True
        return False

    def take(self) -> list[ToolCallBody] | None:
        if not self._names:
            return None
        calls = [
            ToolCallBody(
                function=FunctionCall(
                    name=name, arguments=arguments_object("".join(self._arguments[index]))
                )
            )
            for index, name in sorted(self._names.items())
        ]
        self._names.clear()
        self._arguments.clear()
        return calls


class _Lines:
    """Ollama's NDJSON answer: a line per piece of text (or thinking), the tool calls whole
    once they are written, then the `done` line with the counts."""

    def __init__(self, model_id: str, clock: _Clock, *, chat: bool) -> None:
        self.model_id = model_id
        self.clock = clock
        self.chat = chat
        self.calls = _Calls()

    def opening(self) -> bytes:
        return b""

    def encode(self, event: Event) -> bytes | None:
        self.clock.mark_first()
        if isinstance(event, TextDelta):
            return _line(self.body(event.text)) if event.text else None
        if isinstance(event, ReasoningDelta):
            return _line(self.body("", thinking=event.text)) if event.text else None
        if self.calls.feed(event):
            return None
        if isinstance(event, Finished):
            calls = self.calls.take()
            line = _line(self.body("", calls=calls)) if calls else b""
            return line + _line(self.body("", finished=event))
        return None

    def body(
        self,
        text: str,
        *,
        thinking: str | None = None,
        calls: list[ToolCallBody] | None = None,
        finished: Finished | None = None,
        done_reason: DoneReason | None = None,
    ) -> msgspec.Struct:
        """A line with `text`; the last one (`done`) once `finished`, with the counts, or with
        `done_reason` alone when nothing was generated (a load or an unload)."""
        counts: dict[str, Any] = {}
        if finished is not None:
            counts = msgspec.structs.asdict(self.clock.timings(finished))
            done_reason = _done_reason(finished)
        if done_reason is not None:
            counts["done_reason"] = done_reason
        if self.chat:
            message = AssistantMessage(
                role="assistant", content=text, thinking=thinking or None, tool_calls=calls
            )
            return ChatChunk(
                model=self.model_id,
                created_at=_now(),
                message=message,
                done=done_reason is not None,
                **counts,
            )
        return GenerateChunk(
            model=self.model_id,
            created_at=_now(),
            response=text,
            thinking=thinking or None,
            done=done_reason is not None,
            **counts,
        )

    def whole(self, events: list[Event], finished: Finished) -> msgspec.Struct:
        text = "".join(event.text for event in events if isinstance(event, TextDelta))
        thinking = "".join(event.text for event in events if isinstance(event, ReasoningDelta))
        for event in events:
            self.calls.feed(event)
        calls = self.calls.take()
        return self.body(text, thinking=thinking, calls=calls, finished=finished)


def _failure_line(event: Failed) -> bytes:
    return _line(ErrorBody(error=event.detail))


async def _answer(
    data: GenerateRequest | ChatRequest,
    services: Services,
    request: Request[Any, Any, Any],
) -> Response[Any] | EventStream:
    clock = _Clock()
    refuse_unsupported(data)
    chat = isinstance(data, ChatRequest)
    async with services.model_for(model_id_of(data.model), data.keep_alive) as model:
        if model.loaded_at * 1e9 >= clock.wall_started:
            clock.load_ns = int(model.load_seconds * 1e9)  # this request waited for the load
        if is_load_only(data):
            unloading = data.keep_alive is not None and keep_alive_seconds(data.keep_alive) == 0
            done = _Lines(model.spec.id, clock, chat=chat)
            return Response(done.body("", done_reason="unload" if unloading else "load"))
        info = model.engine.info
        generation = generation_of(
            data,
            has_chat_template=info.chat_template_source is not None,
            context_length=info.context_length,
        )
        stream = await services.generate(request, model, generation)
        lines = _Lines(model.spec.id, clock, chat=chat)
        if data.stream:
            body = chunked_stream(stream, lines, _failure_line, done=b"")
            return EventStream(body, media_type=NDJSON)
        events, finished = await unless_client_leaves(
            request.receive, collect_events(stream, clock.mark_first)
        )
    return Response(lines.whole(events, finished))


@post("/generate", status_code=200, summary="Ollama: complete a prompt (NDJSON by default)")
async def generate(
    data: JSONBody[GenerateRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> Response[Any] | EventStream:
    return await _answer(data, services, request)


@post("/chat", status_code=200, summary="Ollama: answer a conversation (NDJSON by default)")
async def chat(
    data: JSONBody[ChatRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> Response[Any] | EventStream:
    return await _answer(data, services, request)


def _details(services: Services, spec: ModelSpec, facts: GgufFacts) -> ModelDetails:
    return ModelDetails(
        family=facts.architecture,
        families=[facts.architecture],
        parameter_size=facts.parameter_size,
        quantization_level=facts.quantization,
        kind=spec.kind,
        context_length=context_length_of(services, spec) or facts.context_length,
    )


def _modified_at(path: Path) -> str:
    stamp = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return stamp.isoformat().replace("+00:00", "Z")


def _digest(services: Services, spec: ModelSpec, path: Path) -> str:
    expected = services.manager.files.expected_sha256(spec, path)
    # Without a known digest the file is hashed once per version (ModelFiles remembers it).
    return expected[0] if expected is not None else services.manager.files.sha256(path)


def _local_models(services: Services) -> list[ListedModel]:
    """The registry's models on this machine, then the aliases of those."""
    manager = services.manager
    named = [(spec.id, spec) for spec in manager.registry.models.values()]
    named += list(exact_aliases(services).items())
    listed = []
    for name, spec in named:
        path = manager.files.local_path(spec)
        if path is None:
            continue
        facts = gguf_facts(path)
        listed.append(
            ListedModel(
                name=ollama_name(name),
                model=ollama_name(name),
                modified_at=_modified_at(path),
                size=facts.file_size,
                digest=_digest(services, spec, path),
                details=_details(services, spec, facts),
            )
        )
    return listed


@get("/tags", summary="Ollama: the models on this machine")
async def tags(services: NamedDependency[Services]) -> TagsResponse:
    return TagsResponse(models=await asyncio.to_thread(_local_models, services))


def _named(data: ModelRequest) -> str:
    name = data.model_name()
    if not name:
        raise UnsupportedParameter("model", "name the model")
    return name


def _spec_named(services: Services, name: str) -> ModelSpec:
    """The registry's (or the hub's) model an Ollama name means; 404 in Ollama's words."""
    try:
        return services.manager.spec_for(model_id_of(name))
    except ModelNotFound:
        raise ModelNotFound(f"model {name!r} not found") from None


def _local_spec(services: Services, name: str) -> tuple[ModelSpec, Path]:
    spec = _spec_named(services, name)
    path = services.manager.files.local_path(spec)
    if path is None:
        raise ModelNotFound(f"model {name!r} not found; pull it first with /api/pull")
    return spec, path


def _capabilities(template: str) -> list[str]:
    if not template:
        return ["completion"]  # a base model: no chat, so no tools
    # Tool calls work with any chat template (a generic format where it has none of its own).
    return ["completion", "tools", *(["thinking"] if "<think>" in template else [])]


def _show(services: Services, name: str) -> ShowResponse:
    spec, path = _local_spec(services, name)
    facts = gguf_facts(path)
    arch = facts.architecture
    template = spec.chat_template or facts.chat_template or ""
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": facts.name,
        "general.parameter_count": facts.parameter_count,
        f"{arch}.context_length": facts.context_length,
        f"{arch}.embedding_length": facts.embedding_length,
        f"{arch}.block_count": facts.block_count,
    }
    parameters = f"num_ctx {services.settings.ctx or facts.context_length}"
    modelfile = f"FROM {path}\nTEMPLATE {msgspec.json.encode(template).decode()}\n"
    return ShowResponse(
        modelfile=modelfile,
        parameters=parameters,
        template=template,
        details=_details(services, spec, facts),
        model_info=info,
        capabilities=_capabilities(template),
        modified_at=_modified_at(path),
    )


@post("/show", status_code=200, summary="Ollama: what a model is, from its GGUF header")
async def show(data: JSONBody[ModelRequest], services: NamedDependency[Services]) -> ShowResponse:
    return await asyncio.to_thread(_show, services, _named(data))


def _expires_at(model: ResidentModel) -> str:
    unload_at = model.unload_at
    # None: kept until unloaded, or busy; a keep_alive beyond any date is forever too.
    if unload_at is None or not math.isfinite(unload_at):
        return NEVER_EXPIRES
    try:
        stamp = datetime.fromtimestamp(unload_at, UTC)
    except (ValueError, OverflowError, OSError):
        return NEVER_EXPIRES
    return stamp.isoformat().replace("+00:00", "Z")


def _running(services: Services) -> list[RunningModel]:
    running = []
    hardware = None
    for model in services.manager.resident:
        if model.estimate is not None:
            ram, vram = model.ram_bytes, model.vram_bytes
        else:
            hardware = hardware or services.hardware.read()
            footprint = loaded_footprint(services.settings, model, hardware)
            ram, vram = footprint.ram_bytes, footprint.vram_bytes
        running.append(
            RunningModel(
                name=ollama_name(model.spec.id),
                model=ollama_name(model.spec.id),
                size=ram + vram,
                digest=_digest(services, model.spec, model.path),
                details=_details(services, model.spec, gguf_facts(model.path)),
                expires_at=_expires_at(model),
                size_vram=vram,
                context_length=model.engine.info.context_length,
            )
        )
    return running


@get("/ps", summary="Ollama: the models loaded now")
async def ps(services: NamedDependency[Services]) -> PsResponse:
    return PsResponse(models=await asyncio.to_thread(_running, services))


async def _pull_progress(services: Services, spec: ModelSpec) -> AsyncIterator[PullProgress]:
    """Ollama's pull statuses, with byte counts while the file downloads."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[PullProgress] = asyncio.Queue()
    left = False
    digest = f"sha256:{spec.sha256}" if spec.sha256 else spec.file
    label = f"pulling {(spec.sha256 or spec.file)[:12]}"

    def on_bytes(done: int, total: int | None) -> None:
        if left:  # raising is the only way to stop hf_hub_download between two chunks
            raise LoadCancelled(f"the pull of {spec.id!r} stopped: the client left")
        progress = PullProgress(status=label, digest=digest, total=total, completed=done)
        loop.call_soon_threadsafe(queue.put_nowait, progress)

    yield PullProgress(status="pulling manifest")
    fetch = asyncio.ensure_future(asyncio.to_thread(services.manager.files.fetch, spec, on_bytes))
    try:
        while not fetch.done():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({fetch, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        while not queue.empty():
            yield queue.get_nowait()
        path = fetch.result()
    finally:
        left = True  # read by on_bytes, in the download's thread
        if not fetch.done():
            with contextlib.suppress(Exception):
                await fetch
    size = path.stat().st_size
    yield PullProgress(status=label, digest=digest, total=size, completed=size)
    yield PullProgress(status="verifying sha256 digest")
    yield PullProgress(status="writing manifest")
    yield PullProgress(status="success")


@post("/pull", status_code=200, summary="Ollama: download a model, with progress")
async def pull(
    data: JSONBody[ModelRequest], services: NamedDependency[Services]
) -> Response[Any] | EventStream:
    spec = services.manager.spec_for(model_id_of(_named(data)))
    progress = _pull_progress(services, spec)
    if not data.stream:
        steps = [step async for step in progress]
        return Response(steps[-1])

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for step in progress:
                yield _line(step)
        except Exception as exc:  # the stream has started: the error is its last line
            yield _line(ErrorBody(error=str(exc)))

    return EventStream(lines(), media_type=NDJSON)


@delete("/delete", status_code=200, summary="Ollama: remove a model's downloaded file")
async def remove(data: JSONBody[ModelRequest], services: NamedDependency[Services]) -> None:
    name = _named(data)
    manager = services.manager
    spec = _spec_named(services, name)
    path = manager.files.local_path(spec)
    if path is None:
        raise ModelNotFound(f"model {name!r} not found")
    if manager.resident_model(spec.id) is not None and not manager.files.is_packaged(spec, path):
        # Unloaded first (its requests in flight finish): a resident model whose file is gone
        # could no longer be described (/api/ps, /system/info read its header).
        await manager.unload(spec.id)
    if not await asyncio.to_thread(manager.files.remove_cached, spec):
        raise ModelNotFound(f"model {name!r} not found")
    # Ollama answers an empty 200.


@get("/version", summary="Ollama: the server's version")
async def version() -> VersionResponse:
    return VersionResponse(version=__version__)


ollama_router = Router(
    path="/api",
    route_handlers=[
        generate,
        chat,
        tags,
        show,
        ps,
        pull,
        remove,
        version,
        embed_inputs,
        embed_prompt,
    ],
    exception_handlers=OLLAMA_EXCEPTION_HANDLERS,
    opt={**error_body(ErrorBody), **stream_media_type(NDJSON)},
)
