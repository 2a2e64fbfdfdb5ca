"""The OpenAPI document, with each request body described by msgspec, which decodes it.

Litestar's own description of a msgspec Struct loses constraints nested in a type (the
`minLength` of each string in a list, a `minimum` of 0 on an optional number) and knows
nothing of `Meta(extra_json_schema=...)`, where a wire type states what its handler refuses
by name (OpenAI fields accepted only as null). msgspec's JSON Schema for the same Struct is
exactly what decoding enforces, so a body the document allows is one the server accepts,
save for what depends on the loaded model (its context, its vocabulary).

Each operation also lists the errors it may answer, in its surface's error body, and the media
type of its stream, as its route declares them (api/common/schema/answers.py).
"""

from __future__ import annotations

import copy
import http
from typing import Any, get_args

import msgspec
from litestar import Litestar, Request
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
)

from locallab_gguf.api.common.errors import ErrorBody
from locallab_gguf.api.common.schema.answers import (
    ANY_ROUTE,
    ERROR_BODY,
    ERROR_STATUSES,
    NAMES_A_MODEL,
    SSE,
    STREAM_MEDIA_TYPE,
    WITH_PARAMETERS,
)
from locallab_gguf.api.common.streaming.sse import EventStream

COMPONENT_REF = "#/components/schemas/{name}"


class WireSchemaJson(JsonRenderPlugin):
    """Serves /schema/openapi.json, which the browsable pages read too."""

    def __init__(self) -> None:
        super().__init__()
        self._document: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._document is None:  # the routes never change once the app is built
            self._document = self.render_json(
                request, with_wire_bodies(openapi_schema, request.app)
            )
        return self._document


def render_plugins() -> list[OpenAPIRenderPlugin]:
    # The first is what /schema itself shows.
    return [RedocRenderPlugin(), SwaggerRenderPlugin(), WireSchemaJson()]


def with_wire_bodies(document: dict[str, Any], app: Litestar) -> dict[str, Any]:
    """A copy of `document` whose JSON request bodies are msgspec's schemas of their types,
    and whose operations list the errors and streams their routes declare."""
    handlers: dict[tuple[str, str], HTTPRouteHandler] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if isinstance(handler, HTTPRouteHandler):
                for method in handler.http_methods:
                    handlers[(route.path_format, method.lower())] = handler
    document = copy.deepcopy(document)
    operations = {
        key: document["paths"][key[0]][key[1]]
        for key in handlers
        if key[1] in document["paths"].get(key[0], {})
    }
    bodies = {key: _body_type(handlers[key]) for key in operations}
    error_bodies = {key: handlers[key].opt.get(ERROR_BODY, ErrorBody) for key in operations}
    types = list(dict.fromkeys([*filter(None, bodies.values()), *error_bodies.values()]))
    refs, components = msgspec.json.schema_components(types, ref_template=COMPONENT_REF)
    ref_of = dict(zip(types, refs, strict=True))
    # Rules between a body's fields, which no field's type can state (OpenAI's stream_options
    # only with stream: true), are declared by the body as `json_schema_rules`.
    for body, ref in ref_of.items():
        rules = getattr(body, "json_schema_rules", ())
        if rules:
            components[ref["$ref"].rsplit("/", 1)[1]]["allOf"] = list(rules)
    document.setdefault("components", {}).setdefault("schemas", {}).update(components)
    for key, operation in operations.items():
        handler, body = handlers[key], bodies[key]
        if body is not None:
            operation["requestBody"]["content"]["application/json"]["schema"] = ref_of[body]
        responses = operation.setdefault("responses", {})
        if _streams(handler):
            _add_stream(responses, handler.opt.get(STREAM_MEDIA_TYPE, SSE))
        for status in _error_statuses(handler, operation, has_body=body is not None):
            responses[str(status)] = {
                "description": http.HTTPStatus(status).phrase,
                "content": {"application/json": {"schema": ref_of[error_bodies[key]]}},
            }
    return document


def _body_type(handler: HTTPRouteHandler) -> Any:
    data = handler.parsed_fn_signature.parameters.get("data")
    return None if data is None else data.annotation


def _error_statuses(
    handler: HTTPRouteHandler, operation: dict[str, Any], *, has_body: bool
) -> tuple[int, ...]:
    declared: tuple[int, ...] | None = handler.opt.get(ERROR_STATUSES)
    if declared is not None:
        return declared
    if has_body:
        return NAMES_A_MODEL
    return WITH_PARAMETERS if operation.get("parameters") else ANY_ROUTE


def _streams(handler: HTTPRouteHandler) -> bool:
    returned = handler.parsed_fn_signature.return_type.annotation
    return any(
        isinstance(each, type) and issubclass(each, EventStream)
        for each in (returned, *get_args(returned))
    )


# Each event of a stream: its JSON (or `[DONE]`) in `data`, its kind in `event` where named.
_SSE_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}


def _add_stream(responses: dict[str, Any], media_type: str) -> None:
    """A 200 that is a whole JSON body or, when asked for, a stream."""
    success = responses.setdefault("200", {"description": "OK"})
    content = success.setdefault("content", {})
    whole = content.get("application/json", {}).get("schema", {})
    # Litestar describes the stream among the JSON answers as `{}`, which any body matches.
    choices = [each for each in whole.get("oneOf", ()) if each]
    if len(choices) == 1:
        content["application/json"]["schema"] = choices[0]
    content[media_type] = {"schema": _SSE_EVENT if media_type == SSE else {"type": "string"}}
