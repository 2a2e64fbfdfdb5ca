"""POST /models/load and /models/unload; GET /models/current, /models/available,
/models/loaded and /models/status/{id}."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromQuery, JSONBody

from locallab_gguf.api.common.fields import ModelIdInPath
from locallab_gguf.api.common.middleware.access import ADMIN
from locallab_gguf.api.common.schema.answers import ANY_ROUTE, error_statuses
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.locallab.wire import (
    AvailableModel,
    AvailableModels,
    LoadAccepted,
    LoadedModel,
    LoadedModels,
    LoadRequest,
    LoadResponse,
    ModelDescription,
    ModelStatusBody,
    UnloadRequest,
    UnloadResponse,
    body_of,
)
from locallab_gguf.durations import FOREVER
from locallab_gguf.errors import NoModelLoaded
from locallab_gguf.models.catalog import model_rows
from locallab_gguf.models.ids import HF_SCHEME, names_repository
from locallab_gguf.models.splits import local_parts
from locallab_gguf.serving.model_manager import ModelManager
from locallab_gguf.serving.resident import ResidentModel


def describe(model: ResidentModel) -> ModelDescription:
    info = model.engine.info
    return ModelDescription(
        id=model.spec.id,
        name=model.spec.name,
        file=model.spec.file,  # as the repository names it: no path of this server
        size_bytes=sum(part.stat().st_size for part in local_parts(model.path)),
        context_length=info.context_length,
        n_gpu_layers=info.n_gpu_layers,
        chat_template_source=info.chat_template_source,
        parallel=info.parallel,
        draft_model=info.draft_model,
        draft_model_refused=info.draft_model_refused,
    )


def status_url(model_id: str) -> str:
    return "/models/status/" + quote(model_id, safe="/:@")


@post(
    "/models/load",
    status_code=200,
    summary="Load a model, downloading it first if need be; answers once it serves, "
    "or at once with 202 and a status URL when ?wait=false (admin key)",
    opt={ADMIN: True},
)
async def load_model(
    data: JSONBody[LoadRequest],
    services: NamedDependency[Services],
    wait: FromQuery[bool] = True,
) -> Response[LoadResponse | LoadAccepted]:
    # A repository (owner/repo:Q4_K_M) is resolved to its file first: the answer names it.
    spec = await services.manager.resolve(data.model_id)
    picked = f" (what {data.model_id!r} picks)" if names_repository(data.model_id) else ""
    loading = services.manager.start_load(spec.id)
    if wait or loading.done():
        # Shielded: a client that hangs up does not stop the load.
        model = await asyncio.shield(loading)
        loaded = LoadResponse(
            status="success",
            message=f"model {model.spec.id!r}{picked} is loaded",
            model=describe(model),
        )
        return Response(loaded, status_code=200)
    model_id = services.manager.loading_id or spec.id
    url = status_url(model_id)
    accepted = LoadAccepted(
        status="accepted",
        message=f"model {model_id!r}{picked} is loading; GET {url} to follow it",
        model_id=model_id,
        status_url=url,
    )
    return Response(accepted, status_code=202, headers={"Location": url})


@post(
    "/models/unload",
    status_code=200,
    summary='Unload the default model, or the one a body {"model_id": ...} names (admin key)',
    opt={ADMIN: True},
)
async def unload_model(
    services: NamedDependency[Services], data: JSONBody[UnloadRequest | None] = None
) -> UnloadResponse:
    previous = await services.manager.unload(data.model_id if data is not None else None)
    message = (
        f"model {previous.spec.id!r} is unloaded; requests in flight finish first"
        if previous
        else "no model was loaded"
    )
    return UnloadResponse(
        status="success", message=message, model_id=previous.spec.id if previous else None
    )


@get(
    "/models/current",
    summary="The default model, when it is loaded (404 when not)",
    opt=error_statuses(*ANY_ROUTE, 404),
)
async def current_model(services: NamedDependency[Services]) -> ModelDescription:
    current = services.manager.current
    if current is None:
        # 404 rather than the 503 of generation endpoints: LocalLab clients rely on it.
        raise NotFoundException(str(NoModelLoaded()))
    return describe(current)


@get("/models/available", summary="The models of the registry")
async def available_models(services: NamedDependency[Services]) -> AvailableModels:
    manager = services.manager
    current = manager.current
    resident = {model.spec.id for model in manager.resident}
    # Off the event loop: it reads the disk, and the first look into the Hugging Face cache
    # imports huggingface_hub.
    rows = await asyncio.to_thread(model_rows, manager.registry, manager.files)
    models = [
        AvailableModel(
            id=spec.id,
            name=spec.name,
            description=spec.description,
            kind=spec.kind,
            repo=spec.repo,
            file=spec.file,
            size_bytes=row.size_bytes,
            is_local=row.local != "no",
            is_loaded=spec.id in resident,
            is_default=row.is_default,
        )
        for spec, row in zip(manager.registry.models.values(), rows, strict=True)
    ]
    return AvailableModels(
        models=models,
        current_model=current.spec.id if current else None,
        default_model=manager.registry.default,
    )


@get("/models/loaded", summary="The resident models: memory, slots, queue, last use, unload time")
async def loaded_models(services: NamedDependency[Services]) -> LoadedModels:
    manager = services.manager
    return LoadedModels(
        models=loaded_rows(manager),
        default_model=manager.default_id,
        max_models=manager.policy.max_models,
    )


def loaded_rows(manager: ModelManager) -> list[LoadedModel]:
    return [_loaded_row(model, model.spec.id == manager.default_id) for model in manager.resident]


def _loaded_row(model: ResidentModel, is_default: bool) -> LoadedModel:
    engine = model.engine
    stats = engine.stats()
    return LoadedModel(
        id=model.spec.id,
        name=model.spec.name,
        is_default=is_default,
        pinned=model.pinned,
        state=engine.state,
        ram_bytes=model.ram_bytes,
        vram_bytes=model.vram_bytes,
        slots_busy=stats.slots_busy,
        slots_total=stats.slots_total,
        queue_depth=stats.queue_depth,
        requests_in_flight=model.in_flight,
        loaded_at=model.loaded_at,
        load_seconds=model.load_seconds,
        last_used=model.last_used,
        keep_alive_seconds=None if model.keep_alive == FOREVER else model.keep_alive,
        unload_at=model.unload_at,
    )


@get(
    "/models/status/{model_id:path}",
    summary="Where a model stands: downloading (bytes so far and in all), loading, loaded, "
    "unloaded or failed",
)
async def model_status(
    model_id: ModelIdInPath, services: NamedDependency[Services]
) -> ModelStatusBody:
    # A path parameter keeps its leading slash, and the router folds the '//' of hf://.
    model_id = model_id.removeprefix("/")
    if model_id.startswith("hf:/") and not model_id.startswith(HF_SCHEME):
        model_id = HF_SCHEME + model_id.removeprefix("hf:/")
    spec = await services.manager.resolve(model_id)  # a repository id may ask the hub
    return body_of(services.manager.state_of(spec.id), ModelStatusBody)
