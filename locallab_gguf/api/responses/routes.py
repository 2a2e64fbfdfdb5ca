"""OpenAI's Responses API: POST /v1/responses, and the stored responses it keeps.

A Router of its own under /v1, with the OpenAI surface's error shape and handlers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Request, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, PathParameter, QueryParameter

from locallab_gguf.api.common.middleware.request_log import record_of
from locallab_gguf.api.common.schema.answers import WITH_PARAMETERS, error_body, error_statuses
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.common.streaming.sse import (
    EventStream,
    chunked_stream,
    collect_events,
    unless_client_leaves,
)
from locallab_gguf.api.openai.errors import OPENAI_EXCEPTION_HANDLERS
from locallab_gguf.api.openai.wire import ErrorBody
from locallab_gguf.api.responses.output import ResponseAssembler, StreamEncoder, response_shell
from locallab_gguf.api.responses.requests import (
    chat_messages,
    generation,
    input_items,
    tool_use,
)
from locallab_gguf.api.responses.store import ResponseStore, StoredResponse
from locallab_gguf.api.responses.wire import (
    DeletedResponse,
    InputItemList,
    Item,
    ResponseBody,
    ResponseRequest,
)

ResponseId = Annotated[str, PathParameter(description="a response id, resp_...")]
_SEALED_REASONING = "reasoning.encrypted_content"


def owner_of(request: Request[Any, Any, Any]) -> str | None:
    """Whose stored responses a request may see: its API key's (a digest, never the key);
    None when the server takes no keys, and every client sees every stored response."""
    record = record_of(request.scope)
    client = None if record is None else record.client
    return client if client is not None and client.startswith("key:") else None


def _not_found(response_id: str) -> NotFoundException:
    return NotFoundException(
        f"no stored response {response_id!r}: it was created with store: false, deleted, "
        "evicted from this server's store (--responses-max keeps the most recently used), "
        "or it belongs to another API key"
    )


def _stored(store: ResponseStore, response_id: str, owner: str | None) -> StoredResponse:
    stored = store.get(response_id, owner)
    if stored is None:
        raise _not_found(response_id)
    return stored


@post(
    "/responses",
    status_code=200,
    summary="OpenAI Responses API: a model response, whole or as a stream of semantic events",
)
async def create_response(
    data: JSONBody[ResponseRequest],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> ResponseBody | EventStream:
    store = services.responses
    owner = owner_of(request)
    history: list[Item] = []
    if data.previous_response_id is not None:
        history = _stored(store, data.previous_response_id, owner).history
    items = input_items(data, store.seal)
    use, names = tool_use(data)
    messages = chat_messages([*history, *items], data.instructions, first_input=len(history))
    sealed = store.seal if _SEALED_REASONING in (data.include or ()) else None

    def keep(response: ResponseBody) -> None:
        history_after = [*history, *items, *response.output]
        store.put(
            StoredResponse(response=response, owner=owner, input_items=items, history=history_after)
        )

    async with services.model_for(data.model, data.keep_alive) as model:
        engine_request = generation(data, messages, use, model.engine.info.context_length)
        stream = await services.generate(request, model, engine_request, user=data.user)
        shell = response_shell(data, model.spec.id)
        assembler = ResponseAssembler(
            shell, names, sealed, on_done=keep if data.store is not False else None
        )
        if data.stream:
            encoder = StreamEncoder(assembler)
            return EventStream(chunked_stream(stream, encoder, encoder.failure, done=b""))
        events, finished = await unless_client_leaves(request.receive, collect_events(stream))
    for event in events:
        assembler.feed(event)
    assembler.finish(finished)
    return assembler.response


@get(
    "/responses/{response_id:str}",
    summary="A stored response",
    opt=error_statuses(*WITH_PARAMETERS),
)
async def retrieve_response(
    response_id: ResponseId,
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> ResponseBody:
    return _stored(services.responses, response_id, owner_of(request)).response


@delete(
    "/responses/{response_id:str}",
    status_code=200,
    summary="Delete a stored response",
    opt=error_statuses(*WITH_PARAMETERS),
)
async def delete_response(
    response_id: ResponseId,
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> DeletedResponse:
    if not services.responses.delete(response_id, owner_of(request)):
        raise _not_found(response_id)
    return DeletedResponse(id=response_id)


@get(
    "/responses/{response_id:str}/input_items",
    summary="The input items of a stored response",
    opt=error_statuses(*WITH_PARAMETERS),
)
async def list_input_items(
    response_id: ResponseId,
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
    order: Annotated[
        Literal["asc", "desc"], QueryParameter(description="newest first: desc")
    ] = "desc",
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, QueryParameter(description="list the items after this item id")
    ] = None,
) -> InputItemList:
    items = list(_stored(services.responses, response_id, owner_of(request)).input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.id for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return InputItemList(
        data=page,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=len(items) > limit,
    )


responses_router = Router(
    path="/v1",
    route_handlers=[create_response, retrieve_response, delete_response, list_input_items],
    exception_handlers=OPENAI_EXCEPTION_HANDLERS,
    opt=error_body(ErrorBody),
)
