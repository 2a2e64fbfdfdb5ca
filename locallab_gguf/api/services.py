"""What the route handlers share: settings, model manager, hardware probe, request counts."""

from __future__ import annotations

import collections
import time

from locallab_gguf.hardware import HardwareProbe
from locallab_gguf.model_manager import ActiveModel, ModelManager
from locallab_gguf.settings import Settings


class RequestCounter:
    """Responses sent, by status code; fed once per response by the app's send hook."""

    def __init__(self) -> None:
        self.by_status: collections.Counter[int] = collections.Counter()

    def record(self, status: int) -> None:
        self.by_status[status] += 1

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


class Services:
    def __init__(self, settings: Settings, manager: ModelManager, hardware: HardwareProbe) -> None:
        self.settings = settings
        self.manager = manager
        self.hardware = hardware
        self.requests = RequestCounter()
        self.started_at = time.time()

    def new_tokens_default(self, model: ActiveModel) -> int:
        # The server default never exceeds what fits beside a one-token prompt.
        return min(self.settings.default_max_tokens, model.engine.info.context_length - 1)
