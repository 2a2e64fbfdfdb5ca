"""POST /tokenize and /detokenize: a model's tokenizer, in the shapes llama.cpp's server uses.

`model` picks the model as every route does (absent: the default), loading it if need be.
A token's piece is its text when its bytes are valid UTF-8 on their own, otherwise the list of
its byte values, as llama.cpp's server gives them: byte-level vocabularies split an emoji or
a CJK character across tokens. /detokenize joins the pieces, control tokens as their text.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from msgspec import Meta

from locallab_gguf.api.common.fields import INT32_MAX, ModelId
from locallab_gguf.api.common.services import Services
from locallab_gguf.errors import TokenNotInVocabulary
from locallab_gguf.serving.resident import ResidentModel

ModelField = ModelId | None  # absent: the default model
TokenId = Annotated[int, Meta(ge=0, le=INT32_MAX, description="an id in the model's vocabulary")]
Byte = Annotated[int, Meta(ge=0, le=255)]


class TokenizeRequest(msgspec.Struct, kw_only=True):
    model: ModelField = None
    content: Annotated[
        str | list[str | TokenId],
        Meta(
            description="the text to tokenize, or a list of texts and token ids: the texts "
            "tokenized and the ids kept, in order"
        ),
    ]
    add_special: Annotated[
        bool,
        Meta(
            description="add the tokens the model puts before every text (its BOS); with a "
            "list, only when it begins with a text"
        ),
    ] = False
    parse_special: Annotated[
        bool,
        Meta(description="read control-token text such as <|im_start|> as that token"),
    ] = True
    with_pieces: Annotated[
        bool, Meta(description="answer {id, piece} objects instead of bare ids")
    ] = False


class TokenPiece(msgspec.Struct):
    id: int
    # The bytes as a list of values where they are not valid UTF-8 on their own.
    piece: str | list[Byte]


class TokenizeResponse(msgspec.Struct):
    # One type for both answers: a schema of two alternatives would match `[]` twice.
    tokens: Annotated[
        list[int | TokenPiece],
        Meta(description="ids; with with_pieces, {id, piece} objects"),
    ]


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    model: ModelField = None
    tokens: list[TokenId]


class DetokenizeResponse(msgspec.Struct):
    content: str


@post("/tokenize", status_code=200, summary="Text to the model's token ids (llama.cpp's shape)")
async def tokenize(
    data: JSONBody[TokenizeRequest], services: NamedDependency[Services]
) -> TokenizeResponse:
    async with services.model_for(data.model) as model:
        tokens = await _tokens_of(model, data)
        if not data.with_pieces:
            return TokenizeResponse(list(tokens))
        pieces = await model.engine.token_pieces(tokens)
    return TokenizeResponse(
        [TokenPiece(token, _piece_body(piece)) for token, piece in zip(tokens, pieces, strict=True)]
    )


@post("/detokenize", status_code=200, summary="Token ids to text (llama.cpp's shape)")
async def detokenize(
    data: JSONBody[DetokenizeRequest], services: NamedDependency[Services]
) -> DetokenizeResponse:
    async with services.model_for(data.model) as model:
        pieces = await model.engine.token_pieces(data.tokens)
    # Ids that end inside a character (a cut-off emoji) leave bytes no text can hold.
    return DetokenizeResponse(b"".join(pieces).decode("utf-8", errors="replace"))


async def _tokens_of(model: ResidentModel, data: TokenizeRequest) -> list[int]:
    """The content's ids; a list's texts are tokenized one by one (the model's BOS, if asked
    for, only before a first item that is text, as llama.cpp's server does) and its ids kept."""
    engine = model.engine
    parts = [data.content] if isinstance(data.content, str) else data.content
    tokens: list[int] = []
    for index, part in enumerate(parts):
        if isinstance(part, int):
            if part >= engine.info.n_vocab:
                raise TokenNotInVocabulary(
                    f"content[{index}]", part, model.path.name, engine.info.n_vocab
                )
            tokens.append(part)
            continue
        first = index == 0
        tokens += await engine.tokenize(
            part, add_special=data.add_special and first, parse_special=data.parse_special
        )
    return tokens


def _piece_body(piece: bytes) -> str | list[int]:
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)
