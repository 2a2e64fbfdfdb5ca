"""GET /metrics: Prometheus' text format (what is measured: locallab_gguf.serving.metrics)."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from locallab_gguf.api.common.middleware.access import UNLIMITED
from locallab_gguf.api.common.services import Services
from locallab_gguf.serving.metrics import CONTENT_TYPE


@get(
    "/metrics",
    summary="Prometheus metrics; never rate limited, behind the API key when keys are set",
    opt={UNLIMITED: True},
    media_type=CONTENT_TYPE,
)
async def metrics(services: NamedDependency[Services]) -> Response[bytes]:
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE)
