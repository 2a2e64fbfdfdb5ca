"""POST /v1/rerank (also /rerank): documents scored against a query by a reranker model,
in the shape llama.cpp's server, Jina and Cohere answer; errors in OpenAI's shape, as
llama.cpp's server sends them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from msgspec import Meta

from locallab_gguf.api.common.encoding import encoder_for, rerank
from locallab_gguf.api.common.fields import INT32_MAX, KeepAlive, ModelId
from locallab_gguf.api.common.schema.answers import error_body
from locallab_gguf.api.common.services import Services
from locallab_gguf.api.openai.errors import OPENAI_EXCEPTION_HANDLERS
from locallab_gguf.api.openai.wire import ErrorBody
from locallab_gguf.engine.types import RerankRequest


class RerankRequestBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    query: Annotated[str, Meta(min_length=1)]
    documents: Annotated[
        list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1, max_length=1000)
    ]
    model: ModelId | None = None  # None: the default model
    top_n: Annotated[int, Meta(ge=1, le=INT32_MAX)] | None = None  # None: every document
    return_documents: bool = False
    # Not llama.cpp's: encode the first tokens of a long pair instead of answering 413.
    truncate: bool = False
    keep_alive: KeepAlive = None


class RerankDocument(msgspec.Struct, kw_only=True):
    text: str


class RerankResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int  # of the document in the request
    relevance_score: float  # the reranker's raw score (a logit): higher is more relevant
    document: RerankDocument | None = None  # with return_documents


class RerankUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(msgspec.Struct, kw_only=True):
    model: str
    object: Literal["list"] = "list"
    results: list[RerankResult]  # most relevant first
    usage: RerankUsage


@post(
    ["/v1/rerank", "/rerank"],
    status_code=200,
    summary="Rerank documents by relevance to a query (llama.cpp, Jina and Cohere shape)",
    exception_handlers=OPENAI_EXCEPTION_HANDLERS,
    opt=error_body(ErrorBody),
)
async def rerank_documents(
    data: JSONBody[RerankRequestBody],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> RerankResponse:
    job = RerankRequest(query=data.query, documents=tuple(data.documents), truncate=data.truncate)
    async with encoder_for(services, data.model, "reranker", data.keep_alive) as model:
        rankings = await rerank(services, model, job, request.receive)
    order = sorted(range(len(rankings.scores)), key=lambda i: rankings.scores[i], reverse=True)
    if data.top_n is not None:
        order = order[: data.top_n]
    results = [
        RerankResult(
            index=i,
            relevance_score=rankings.scores[i],
            document=RerankDocument(text=data.documents[i]) if data.return_documents else None,
        )
        for i in order
    ]
    tokens = rankings.prompt_tokens
    return RerankResponse(
        model=model.spec.id,
        results=results,
        usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
