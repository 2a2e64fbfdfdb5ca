"""POST /models/load and /models/unload; GET /models/current and /models/available."""

from __future__ import annotations

from litestar import get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody

from locallab_gguf.api.services import Services
from locallab_gguf.api.wire import (
    AvailableModel,
    AvailableModels,
    LoadRequest,
    LoadResponse,
    ModelDescription,
    UnloadResponse,
)
from locallab_gguf.errors import NoModelLoaded
from locallab_gguf.model_manager import ActiveModel


def describe(model: ActiveModel) -> ModelDescription:
    info = model.engine.info
    return ModelDescription(
        id=model.spec.id,
        name=model.spec.name,
        file=str(model.path),
        size_bytes=model.path.stat().st_size,
        context_length=info.context_length,
        n_gpu_layers=info.n_gpu_layers,
        chat_template_source=info.chat_template_source,
        parallel=info.parallel,
    )


@post("/models/load", status_code=200, summary="Load a model; answers once it serves")
async def load_model(
    data: JSONBody[LoadRequest], services: NamedDependency[Services]
) -> LoadResponse:
    model = await services.manager.load(data.model_id)
    return LoadResponse(
        status="success",
        message=f"model {model.spec.id!r} is loaded",
        model=describe(model),
    )


@post("/models/unload", status_code=200, summary="Unload the model")
async def unload_model(services: NamedDependency[Services]) -> UnloadResponse:
    previous = await services.manager.unload()
    message = (
        f"model {previous.spec.id!r} is unloaded; requests in flight finish first"
        if previous
        else "no model was loaded"
    )
    return UnloadResponse(status="success", message=message)


@get("/models/current", summary="The loaded model (404 when none)")
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
    models = []
    for spec in manager.registry.models.values():
        local = manager.files.local_path(spec)
        models.append(
            AvailableModel(
                id=spec.id,
                name=spec.name,
                description=spec.description,
                repo=spec.repo,
                file=spec.file,
                size_bytes=local.stat().st_size if local else spec.size_bytes,
                is_local=local is not None,
                is_loaded=current is not None and current.spec.id == spec.id,
                is_default=spec.id == manager.registry.default,
            )
        )
    return AvailableModels(
        models=models,
        current_model=current.spec.id if current else None,
        default_model=manager.registry.default,
    )
