"""What the model lists of every surface say about a model beyond its id."""

from __future__ import annotations

from locallab_gguf.api.common.services import Services
from locallab_gguf.errors import LocalLabError
from locallab_gguf.models.registry import ModelSpec


def context_length_of(services: Services, spec: ModelSpec) -> int | None:
    """The context of each request to `spec`, in tokens: the loaded engine's, else the one
    models.toml or --ctx sets; None when it is decided at load time (by free memory)."""
    resident = services.manager.resident_model(spec.id)
    if resident is not None:
        return resident.engine.info.context_length
    return spec.context_length or services.settings.fixed_ctx


def exact_aliases(services: Services) -> dict[str, ModelSpec]:
    """The exact alias names (patterns name no model of their own) and what each means."""
    manager = services.manager
    named = {}
    for name, target in manager.registry.aliases.exact.items():
        if name in manager.registry.models:
            continue  # the registry's model of that name is listed already
        try:
            named[name] = manager.spec_for(target)
        except LocalLabError:
            continue  # a hub file this server does not serve (--custom-models off)
    return named
