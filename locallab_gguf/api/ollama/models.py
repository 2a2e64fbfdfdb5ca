"""Ollama's model management under /api: tags, show, ps, pull, delete, version."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from litestar import Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from locallab_gguf import __version__
from locallab_gguf.api.common.listing import context_length_of, exact_aliases
from locallab_gguf.api.common.middleware.access import ADMIN
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.common.streaming.sse import (
    EventStream,
)
from locallab_gguf.api.ollama.requests import (
    model_id_of,
    ollama_name,
)
from locallab_gguf.api.ollama.responses import NDJSON, ndjson_line
from locallab_gguf.api.ollama.wire import (
    ErrorBody,
    ListedModel,
    ModelDetails,
    ModelRequest,
    PsResponse,
    PullProgress,
    RpcShare,
    RunningModel,
    ShowResponse,
    TagsResponse,
    VersionResponse,
)
from locallab_gguf.errors import (
    LoadCancelled,
    ModelNotFound,
    UnsupportedParameter,
)
from locallab_gguf.models.catalog import model_capabilities
from locallab_gguf.models.registry import ModelSpec
from locallab_gguf.placement.gguf_facts import GgufFacts, gguf_facts
from locallab_gguf.placement.offload import OffloadPlan
from locallab_gguf.placement.plan_text import plan_summary
from locallab_gguf.serving.footprint import loaded_footprint
from locallab_gguf.serving.resident import ResidentModel
from locallab_gguf.serving.room import judge_before_download, planned_context

NEVER_EXPIRES = "2318-01-01T00:00:00Z"


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


# Ollama's names for what a model does; it lists "embedding" only for embedding models.
_OLLAMA_CAPABILITIES = ("completion", "tools", "thinking")


def _capabilities(spec: ModelSpec, template: str) -> list[str]:
    capabilities = model_capabilities(spec, template)
    if "completion" not in capabilities:  # an embedding model or a reranker
        return ["embedding"] if "embeddings" in capabilities else []
    return [name for name in capabilities if name in _OLLAMA_CAPABILITIES]


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
    # A model not loaded under --ctx auto: the context a load would get now, as planned.
    num_ctx = (
        context_length_of(services, spec)
        or planned_context(services.manager.planner, spec, path)
        or facts.context_length
    )
    parameters = f"num_ctx {num_ctx}"
    modelfile = f"FROM {path.name}\nTEMPLATE {msgspec.json.encode(template).decode()}\n"
    return ShowResponse(
        modelfile=modelfile,
        parameters=parameters,
        template=template,
        details=_details(services, spec, facts),
        model_info=info,
        capabilities=_capabilities(spec, template),
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
        rpc = model.engine.info.rpc
        shares = [
            RpcShare(
                endpoint=share.endpoint, device=share.device, layers=share.layers, bytes=share.bytes
            )
            for share in (rpc.devices if rpc else [])
        ]
        running.append(
            RunningModel(
                name=ollama_name(model.spec.id),
                model=ollama_name(model.spec.id),
                size=ram + vram + sum(share.bytes for share in shares),
                digest=_digest(services, model.spec, model.path),
                details=_details(services, model.spec, gguf_facts(model.path)),
                expires_at=_expires_at(model),
                size_vram=vram,
                context_length=model.engine.info.context_length,
                prompt_cache_bytes=model.engine.stats().prompt_reuse.cache_bytes,
                cache_type_k=model.engine.info.cache_type_k.value,
                cache_type_v=model.engine.info.cache_type_v.value,
                rpc=shares,
            )
        )
    return running


@get("/ps", summary="Ollama: the models loaded now")
async def ps(services: NamedDependency[Services]) -> PsResponse:
    return PsResponse(models=await asyncio.to_thread(_running, services))


async def _pull_progress(
    services: Services, spec: ModelSpec, plan: OffloadPlan | None
) -> AsyncIterator[PullProgress]:
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
    if plan is not None:  # one status line, which Ollama's clients print as they get it
        yield PullProgress(status=f"plan: {plan_summary(plan)}")
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


@post(
    "/pull",
    status_code=200,
    summary="Ollama: download a model, with progress (admin key)",
    opt={ADMIN: True},
)
async def pull(
    data: JSONBody[ModelRequest], services: NamedDependency[Services]
) -> Response[Any] | EventStream:
    spec = services.manager.spec_for(model_id_of(_named(data)))
    # Planned from the file's header before its weights come: a model that could never load
    # here is a 507 before the stream starts, with the sizes.
    manager = services.manager
    plan = await judge_before_download(
        spec, manager.files, manager.planner, manager.resident, manager.policy.max_models
    )
    progress = _pull_progress(services, spec, plan)
    if not data.stream:
        steps = [step async for step in progress]
        return Response(steps[-1])

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for step in progress:
                yield ndjson_line(step)
        except Exception as exc:  # the stream has started: the error is its last line
            yield ndjson_line(ErrorBody(error=str(exc)))

    return EventStream(lines(), media_type=NDJSON)


@delete(
    "/delete",
    status_code=200,
    summary="Ollama: remove a model's downloaded file (admin key)",
    opt={ADMIN: True},
)
async def remove(data: JSONBody[ModelRequest], services: NamedDependency[Services]) -> None:
    name = _named(data)
    manager = services.manager
    spec = _spec_named(services, name)
    path = manager.files.local_path(spec)
    if (
        path is not None
        and manager.resident_model(spec.id)
        and not manager.files.is_packaged(spec, path)
    ):
        # Unloaded first (its requests in flight finish): a resident model whose file is gone
        # could no longer be described (/api/ps, /system/info read its header).
        await manager.unload(spec.id)
    # A split model missing some parts has no path; the parts that are here are removed.
    if not await asyncio.to_thread(manager.files.remove_cached, spec):
        raise ModelNotFound(f"model {name!r} not found")
    # Ollama answers an empty 200.


# The Ollama API version this server answers like. Clients gate features on it (Codex's
# --oss path requires 0.13.4 or newer); our own version is in a header and /system/info.
OLLAMA_COMPATIBLE_VERSION = "0.13.5"
VERSION_HEADER = "X-LocalLab-Version"


@get(
    "/version",
    summary="Ollama: the Ollama API version this server is compatible with (its own version "
    "is in the X-LocalLab-Version header)",
)
async def version() -> Response[VersionResponse]:
    return Response(
        VersionResponse(version=OLLAMA_COMPATIBLE_VERSION),
        headers={VERSION_HEADER: __version__},
    )
