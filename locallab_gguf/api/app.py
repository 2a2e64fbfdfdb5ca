"""create_app(settings, services): the whole HTTP application from what it is given."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from litestar import Litestar, Request, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig

from locallab_gguf import __version__
from locallab_gguf.api.anthropic.routes import anthropic_router
from locallab_gguf.api.common.errors import EXCEPTION_HANDLERS
from locallab_gguf.api.common.metrics import metrics
from locallab_gguf.api.common.middleware.access import AccessControl, role_of
from locallab_gguf.api.common.middleware.request_log import RequestObserver
from locallab_gguf.api.common.schema.body import BoundedRequest
from locallab_gguf.api.common.schema.openapi import render_plugins
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.locallab.generation import chat, generate, generate_batch
from locallab_gguf.api.locallab.models import (
    available_models,
    current_model,
    load_model,
    loaded_models,
    model_status,
    unload_model,
)
from locallab_gguf.api.locallab.system import health, system_info
from locallab_gguf.api.locallab.tokenizer import detokenize, tokenize
from locallab_gguf.api.ollama.routes import ollama_router
from locallab_gguf.api.openai.routes import openai_router
from locallab_gguf.api.rerank.routes import rerank_documents
from locallab_gguf.api.responses.routes import responses_router
from locallab_gguf.api.ui.routes import ui_router
from locallab_gguf.errors import LocalLabError
from locallab_gguf.ratelimit import Clock
from locallab_gguf.settings import Settings

log = logging.getLogger(__name__)

ROUTES: list[HTTPRouteHandler | Router] = [
    generate,
    generate_batch,
    chat,
    tokenize,
    detokenize,
    load_model,
    unload_model,
    current_model,
    available_models,
    loaded_models,
    model_status,
    health,
    system_info,
    metrics,
    openai_router,
    responses_router,
    ollama_router,
    anthropic_router,
    rerank_documents,
]


def create_app(settings: Settings, services: Services, *, clock: Clock = time.time) -> Litestar:
    """The services' initial model, and the registry's preload models, start loading when
    the server starts; /health says when the initial one is ready.

    `clock` times the rate limits; a wall clock, so that replicas sharing a store agree.
    """
    manager = services.manager
    initial_model = services.initial_model
    access = AccessControl(settings, clock)
    observer = RequestObserver(services.metrics, access.clients.of)
    background: set[asyncio.Task[Any]] = set()

    def services_for(request: Request[Any, Any, Any]) -> Services:
        # Bound to the role of the request's key: what it may load on demand follows from it.
        return services.acting_as(role_of(request.scope, access.keys))

    async def start_loading() -> None:
        preloads = [spec.id for spec in manager.registry.models.values() if spec.preload]

        async def load() -> None:
            if initial_model is not None:
                try:
                    await manager.load(initial_model)
                except LocalLabError as exc:
                    log.error("the model %r did not load: %s", initial_model, exc)
            for model_id in preloads:
                try:
                    await manager.preload(model_id)
                except LocalLabError as exc:
                    log.error("the preload model %r did not load: %s", model_id, exc)

        task = asyncio.create_task(load())
        background.add(task)
        task.add_done_callback(background.discard)

    async def stop() -> None:
        for task in background:
            task.cancel()
        await manager.close()
        await access.close()
        services.responses.close()

    return Litestar(
        route_handlers=[*ROUTES, ui_router()] if settings.ui else ROUTES,
        dependencies={"services": Provide(services_for, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        request_class=BoundedRequest,
        before_send=[observer.observe_unrouted],
        # The observer is outermost: it sees the requests the limits and key check refuse.
        middleware=[observer, *access.middleware],
        cors_config=access.cors,
        on_startup=[start_loading],
        on_shutdown=[stop],
        state=State({"services": services}),
        openapi_config=OpenAPIConfig(
            title="locallab-gguf",
            version=__version__,
            description="The LocalLab REST API over GGUF models.",
            path="/schema",
            render_plugins=render_plugins(),
        ),
        # Logging is the CLI's to configure, once, for the whole process.
        logging_config=None,
        debug=False,
    )
