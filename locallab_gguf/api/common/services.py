"""What the route handlers share: settings, model manager, hardware probe, metrics, and the
one way a route starts a generation. The caller builds it (the CLI, or a test) and hands it
to create_app."""

from __future__ import annotations

import copy
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from litestar import Request

from locallab_gguf.api.common.middleware.keys import Role
from locallab_gguf.api.common.middleware.request_log import record_of
from locallab_gguf.api.common.model_kinds import require_kind
from locallab_gguf.api.common.streaming.metered_stream import MeteredStream
from locallab_gguf.api.responses.store import ResponseStore
from locallab_gguf.durations import keep_alive_seconds
from locallab_gguf.engine.types import GenerationRequest
from locallab_gguf.placement.hardware import HardwareProbe
from locallab_gguf.serving.metrics import Metrics
from locallab_gguf.serving.model_manager import ModelManager
from locallab_gguf.serving.resident import ResidentModel
from locallab_gguf.settings import Settings


class Services:
    def __init__(
        self,
        settings: Settings,
        manager: ModelManager,
        hardware: HardwareProbe,
        *,
        initial_model: str | None = None,
        engine_version: str = "unknown",
        responses: ResponseStore | None = None,
    ) -> None:
        """`hardware` reads GPUs and memory for /system/info (tests simulate them);
        `initial_model` loads when the server starts; `engine_version` is llama-cpp-python's;
        `responses` keeps the Responses API's stored responses (default: as the settings
        say)."""
        self.settings = settings
        self.manager = manager
        self.hardware = hardware
        self.initial_model = initial_model
        self.engine_version = engine_version
        self.metrics = Metrics(manager)
        self.started_at = time.time()
        self.responses = responses or ResponseStore(
            settings.responses_max, settings.responses_store
        )
        # The role of the key of the request these services serve (acting_as): every request
        # may do everything on a server without keys.
        self.role: Role = "admin"

    def acting_as(self, role: Role) -> Services:
        """These services, for a request whose key has `role`: what it loads on demand is
        bounded by the role (downloads, pinned models)."""
        if role == self.role:
            return self
        bound = copy.copy(self)
        bound.role = role
        return bound

    def model_for(
        self, model_id: str | None, keep_alive: str | float | None = None
    ) -> AbstractAsyncContextManager[ResidentModel]:
        """The model a request names (None: the default), loaded first if need be, and held
        while the block runs: `async with services.model_for(data.model_id) as model:`.
        `keep_alive` is the request's, in Ollama's terms (a bad one is a 400)."""
        seconds = None if keep_alive is None else keep_alive_seconds(keep_alive)
        return self.manager.use(
            model_id,
            seconds,
            refuse_download=self._download_refusal(),
            # Unpinning the start-up, preload or admin-loaded model is an unload: admin's.
            keep_pins=self.role != "admin",
        )

    def _download_refusal(self) -> str | None:
        """Why this request may not make the server download a model; None when it may."""
        if self.role == "admin" or self.settings.allow_pull:
            return None
        return (
            "a user key may not make the server download a model. Ask the operator to pull it "
            "(POST /api/pull or /models/load with an admin key), or to allow downloads on "
            "demand (--allow-pull)"
        )

    async def generate(
        self,
        request: Request[Any, Any, Any],
        model: ResidentModel,
        generation: GenerationRequest,
        user: str | None = None,
    ) -> MeteredStream:
        """Submit to the model's engine; the stream is counted in /metrics and the access log.

        `user` is the end user an OpenAI client names; it goes into the access log.
        """
        require_kind(model.spec, "chat")
        record = record_of(request.scope)
        if record is not None and user is not None:
            record.user = user
        submitted = time.monotonic()
        # The stream holds its model until it ends, after the request's handler returned.
        release = self.manager.hold(model)
        try:
            stream = await model.engine.generate(generation)
        except BaseException:
            release()
            raise
        return MeteredStream(stream, self.metrics, model.spec.id, submitted, record, on_end=release)

    def new_tokens_default(self, model: ResidentModel) -> int:
        # The server default never exceeds what fits beside a one-token prompt.
        return min(self.settings.default_max_tokens, model.engine.info.context_length - 1)
