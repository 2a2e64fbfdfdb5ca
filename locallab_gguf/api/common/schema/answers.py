"""What the OpenAPI document says a route answers besides its own body: the error statuses it
may send, in the error body of its surface, and the media type of a streamed answer.

Routes declare these in their `opt` (Litestar merges it from the app, the router and the
handler, the nearest winning); api/common/schema/openapi.py writes them into the document. A surface
names its error body once on its router (`error_body(...)`). A handler need declare nothing
when the defaults are true of it:

- every route may be refused a missing key (401), a rate limit (429) or an unavailable
  rate-limit store (503); one with parameters, also 400 and 404;
- a route with a JSON body names a model, which may be loaded for it: the body refused (400),
  a hub or registry refusing it (403, 404), a load in the way (409), no room for it (503,
  507), the hub failing (502, 504), the prompt longer than the context (413), the body not
  arriving in time (408) or too large (413);
- a route whose answer may be a stream (`EventStream` among its return types) streams
  `text/event-stream` unless its router says otherwise (`stream_media_type(...)`).
"""

from __future__ import annotations

from typing import Any

ERROR_BODY = "openapi_error_body"
ERROR_STATUSES = "openapi_error_statuses"
STREAM_MEDIA_TYPE = "openapi_stream_media_type"

SSE = "text/event-stream"
ANY_ROUTE: tuple[int, ...] = (401, 429, 503)
WITH_PARAMETERS: tuple[int, ...] = (*ANY_ROUTE, 400, 404)
NAMES_A_MODEL: tuple[int, ...] = (*ANY_ROUTE, 400, 403, 404, 408, 409, 413, 502, 504, 507)


def error_body(body: type[Any]) -> dict[str, Any]:
    """A router's opt: its errors answer `body` (a msgspec Struct)."""
    return {ERROR_BODY: body}


def stream_media_type(media_type: str) -> dict[str, Any]:
    """A router's or handler's opt: its streamed answers are `media_type`."""
    return {STREAM_MEDIA_TYPE: media_type}


def error_statuses(*statuses: int) -> dict[str, Any]:
    """A handler's opt, where the defaults above are not true of it."""
    return {ERROR_STATUSES: tuple(sorted(statuses))}
