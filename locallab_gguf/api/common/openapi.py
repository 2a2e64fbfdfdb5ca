"""The OpenAPI document, with each request body described by msgspec, which decodes it.

Litestar's own description of a msgspec Struct loses constraints nested in a type (the
`minLength` of each string in a list, a `minimum` of 0 on an optional number) and knows
nothing of `Meta(extra_json_schema=...)`, where a wire type states what its handler refuses
by name (OpenAI fields accepted only as null). msgspec's JSON Schema for the same Struct is
exactly what decoding enforces, so a body the document allows is one the server accepts,
save for what depends on the loaded model (its context, its vocabulary).
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
)

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
    """A copy of `document` whose JSON request bodies are msgspec's schemas of their types."""
    bodies: dict[tuple[str, str], Any] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is None:
                continue
            for method in handler.http_methods:
                bodies[(route.path_format, method.lower())] = data.annotation
    types = list(dict.fromkeys(bodies.values()))
    refs, components = msgspec.json.schema_components(types, ref_template=COMPONENT_REF)
    ref_of = dict(zip(types, refs, strict=True))
    document = copy.deepcopy(document)
    # Rules between a body's fields, which no field's type can state (OpenAI's stream_options
    # only with stream: true), are declared by the body as `json_schema_rules`.
    for body, ref in ref_of.items():
        rules = getattr(body, "json_schema_rules", ())
        if rules:
            components[ref["$ref"].rsplit("/", 1)[1]]["allOf"] = list(rules)
    document.setdefault("components", {}).setdefault("schemas", {}).update(components)
    for (path, method), body in bodies.items():
        operation = document["paths"][path][method]
        operation["requestBody"]["content"]["application/json"]["schema"] = ref_of[body]
    return document
