"""GET /v1/models and /v1/models/{id}: in OpenAI's shape, or in Anthropic's when the request
carries `anthropic-version` (Anthropic's SDKs and Claude Code list gateway models so)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from litestar import get
from litestar.di import NamedDependency
from litestar.params import HeaderParameter

from locallab_gguf.api.anthropic.wire import ModelInfo, ModelInfoList
from locallab_gguf.api.common.fields import ModelIdInPath
from locallab_gguf.api.common.listing import context_length_of, exact_aliases
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.openai.wire import ModelList, OpenAIModel
from locallab_gguf.errors import ModelNotFound
from locallab_gguf.models.registry import ModelSpec

OWNER = "locallab-gguf"
AnthropicVersion = Annotated[
    str | None,
    HeaderParameter(
        name="anthropic-version",
        required=False,
        description="any value: the answer takes the shape of Anthropic's model list",
    ),
]


def _described(services: Services, name: str, spec: ModelSpec) -> OpenAIModel:
    # OpenAI's `created` dates the model; this server knows no date for it but its own start.
    state = services.manager.state_of(spec.id).status
    return OpenAIModel(
        id=name,
        created=int(services.started_at),
        owned_by=OWNER,
        state=state,
        kind=spec.kind,
        context_length=context_length_of(services, spec),
        alias_of=None if name == spec.id else spec.id,
    )


def _anthropic(services: Services, model: OpenAIModel, spec: ModelSpec) -> ModelInfo:
    created = datetime.fromtimestamp(model.created, UTC).isoformat().replace("+00:00", "Z")
    return ModelInfo(
        id=model.id,
        display_name=spec.name if model.id == spec.id else f"{model.id} ({spec.name})",
        created_at=created,
        context_length=model.context_length,
    )


def _listed(services: Services) -> list[tuple[str, ModelSpec]]:
    manager = services.manager
    listed = list(manager.registry.models.items())
    listed += [
        (model.spec.id, model.spec)
        for model in manager.resident
        if model.spec.id not in manager.registry.models
    ]
    listed += list(exact_aliases(services).items())
    return listed


@get(
    "/models",
    summary="The registry's models, any other resident one and the aliases, each with its "
    "state, kind and context; a request for any of them loads it",
)
async def list_models(
    services: NamedDependency[Services], anthropic_version: AnthropicVersion = None
) -> ModelList | ModelInfoList:
    listed = [(_described(services, name, spec), spec) for name, spec in _listed(services)]
    if anthropic_version is None:
        return ModelList(data=[model for model, _ in listed])
    # Anthropic's clients look for chat models only.
    data = [_anthropic(services, model, spec) for model, spec in listed if spec.kind == "chat"]
    return ModelInfoList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


@get("/models/{model_id:path}", summary="One model, in OpenAI's (or Anthropic's) shape")
async def retrieve_model(
    model_id: ModelIdInPath,
    services: NamedDependency[Services],
    anthropic_version: AnthropicVersion = None,
) -> OpenAIModel | ModelInfo:
    model_id = model_id.lstrip("/")  # a path parameter keeps its leading slash
    manager = services.manager
    spec = manager.spec_for(model_id)  # a registry id, alias or hub file; else a 404
    if spec.id not in manager.registry.models and manager.resident_model(spec.id) is None:
        raise ModelNotFound(f"the model {model_id!r} is neither in the registry nor loaded")
    name = model_id if manager.registry.aliases.target(model_id) == spec.id else spec.id
    described = _described(services, name, spec)
    return described if anthropic_version is None else _anthropic(services, described, spec)
