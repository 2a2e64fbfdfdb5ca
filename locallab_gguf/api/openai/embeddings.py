"""POST /v1/embeddings: OpenAI's embeddings API, over models of kind "embedding"."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from msgspec import Meta

from locallab_gguf.api.common.encoding import base64_vectors, embed, encoder_for, float_vectors
from locallab_gguf.api.common.fields import INT32_MAX, KeepAlive, ModelId
from locallab_gguf.api.common.services import Services
from locallab_gguf.engine.types import EmbeddingRequest
from locallab_gguf.errors import InvalidRequest

Text = Annotated[str, Meta(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Meta(ge=0, le=INT32_MAX)]], Meta(min_length=1)]
# OpenAI's four forms: a text, texts, token ids, or lists of token ids. (One list type holds
# the three list forms, as msgspec allows one array type in a union, so the schema cannot
# state them apart; a list mixing them is refused after decoding, and the field's description
# says so.)
Input = (
    Text
    | Annotated[
        list[Text | Annotated[int, Meta(ge=0, le=INT32_MAX)] | TokenIds],
        Meta(min_length=1, max_length=2048),
    ]
)


class EmbeddingsRequestBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: Annotated[
        Input,
        Meta(
            description="a text, a list of texts, a list of token ids, or a list of lists of "
            "token ids; a list holds one of these kinds only"
        ),
    ]
    model: ModelId
    encoding_format: Literal["float", "base64"] = "float"
    # Only for models declared to keep their meaning when cut short (models.toml min_dimensions).
    dimensions: Annotated[int, Meta(ge=1, le=INT32_MAX)] | None = None
    user: str | None = None
    # Not OpenAI's: encode the first tokens of a long input instead of answering 413.
    truncate: bool = False
    # Not OpenAI's: false returns the vectors as the model pools them, not scaled to length 1.
    normalize: bool = True
    # Not OpenAI's: how long the model stays loaded once idle, as in Ollama ("5m", 0, -1).
    keep_alive: KeepAlive = None


class EmbeddingBody(msgspec.Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64 of little-endian float32s when asked


class EmbeddingsUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[EmbeddingBody]
    model: str
    usage: EmbeddingsUsage


def engine_inputs(value: str | list[str | int | list[int]]) -> tuple[str | tuple[int, ...], ...]:
    if isinstance(value, str):
        return (value,)
    if all(isinstance(item, int) for item in value):
        return (tuple(item for item in value if isinstance(item, int)),)
    if all(isinstance(item, str) for item in value):
        return tuple(item for item in value if isinstance(item, str))
    if all(isinstance(item, list) for item in value):
        return tuple(tuple(item) for item in value if isinstance(item, list))
    raise InvalidRequest(
        "input: a list must hold only texts, only token ids, or only lists of token ids"
    )


@post("/embeddings", status_code=200, summary="OpenAI embeddings: one vector per input")
async def create_embeddings(
    data: JSONBody[EmbeddingsRequestBody],
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
) -> EmbeddingList:
    job = EmbeddingRequest(
        inputs=engine_inputs(data.input),
        normalize=data.normalize,
        truncate=data.truncate,
        dimensions=data.dimensions,
    )
    async with encoder_for(services, data.model, "embedding", data.keep_alive) as model:
        result = await embed(services, model, job, request.receive)
    vectors: list[list[float] | str] = [
        *(base64_vectors(result) if data.encoding_format == "base64" else float_vectors(result))
    ]
    return EmbeddingList(
        data=[EmbeddingBody(index=i, embedding=vector) for i, vector in enumerate(vectors)],
        model=model.spec.id,
        usage=EmbeddingsUsage(
            prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens
        ),
    )
