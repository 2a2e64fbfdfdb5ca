"""The request and response bodies of Ollama's API under /api.

Ollama's clients send fields this server does not use (`options` it does not know, `context`),
and Ollama itself ignores unknown options, so requests ignore unknown fields; the fields this
server cannot honour (`images`, `suffix`, `template`) are refused by name when set.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from locallab_gguf.api.common.fields import INT32_MAX, KeepAlive, OllamaModelName
from locallab_gguf.api.common.schema.constraints import empty, never, one_of_named

OllamaRole = Literal["system", "user", "assistant", "tool"]
DoneReason = Literal["stop", "length", "load", "unload"]


class Options(msgspec.Struct, kw_only=True):
    """The model options this server honours; Ollama ignores the ones it does not know."""

    temperature: Annotated[float, Meta(ge=0.0, le=100.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Meta(ge=0, le=INT32_MAX)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    # -1: until the model stops or the context is full (Ollama's default); -2: fill the context.
    num_predict: Annotated[int, Meta(ge=-2, le=INT32_MAX), never(0)] | None = None
    stop: list[str] | str | None = None
    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    repeat_penalty: Annotated[float, Meta(gt=0.0, le=10.0)] | None = None
    repeat_last_n: Annotated[int, Meta(ge=-1, le=INT32_MAX)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    # The context is fixed when a model loads; a request's num_ctx is not a reason to reload.
    num_ctx: Annotated[int, Meta(ge=1, le=INT32_MAX)] | None = None
    # Not Ollama's: false turns speculative decoding off for this request.
    speculative: bool | None = None


class FunctionSpec(msgspec.Struct, kw_only=True):
    name: Annotated[str, Meta(min_length=1)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(msgspec.Struct, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionSpec


class FunctionCall(msgspec.Struct, kw_only=True):
    name: str
    arguments: dict[str, Any] = {}  # an object, as Ollama sends it (not JSON text)


class ToolCallBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    function: FunctionCall


class OllamaRequest(msgspec.Struct, kw_only=True):
    """What /api/generate and /api/chat share."""

    model: OllamaModelName
    stream: bool = True
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    think: bool | Literal["high", "medium", "low"] | None = None


# Fields this server refuses by name when set; the schema allows them only empty or null.
class GenerateRequest(OllamaRequest, kw_only=True):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    tools: Annotated[list[Tool] | None, empty()] = None  # tools belong to /api/chat
    images: Annotated[list[str] | None, empty()] = None
    suffix: Annotated[str | None, empty()] = None
    template: Annotated[str | None, empty()] = None
    context: Annotated[list[int] | None, empty()] = None


class ChatMessage(msgspec.Struct, kw_only=True):
    role: OllamaRole
    content: str = ""
    images: Annotated[list[str] | None, empty()] = None
    thinking: str | None = None
    tool_calls: list[ToolCallBody] | None = None
    tool_name: Annotated[
        str | None,
        Meta(
            description="tool messages: the call of an earlier assistant message they answer "
            "(the earliest unanswered one when null)"
        ),
    ] = None


class ChatRequest(OllamaRequest, kw_only=True):
    messages: list[ChatMessage] = []
    tools: list[Tool] | None = None


class Timings(msgspec.Struct, kw_only=True):
    """The counts and durations (nanoseconds) on a final chunk."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


class GenerateChunk(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    created_at: str
    response: str
    thinking: str | None = None
    done: bool
    done_reason: DoneReason | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class AssistantMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"]  # no default: omit_defaults would leave it out
    content: str
    thinking: str | None = None
    tool_calls: list[ToolCallBody] | None = None


class ChatChunk(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    created_at: str
    message: AssistantMessage
    done: bool
    done_reason: DoneReason | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class ModelDetails(msgspec.Struct, kw_only=True):
    parent_model: str = ""
    format: Literal["gguf"] = "gguf"
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str
    # Not Ollama's: what the model is for ("chat", "embedding", "reranker") and the context
    # of each request in tokens (loaded or configured; else the model's trained context).
    kind: str = "chat"
    context_length: int | None = None


class ListedModel(msgspec.Struct, kw_only=True):
    """An entry of /api/tags."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsResponse(msgspec.Struct):
    models: list[ListedModel]


class RunningModel(msgspec.Struct, kw_only=True):
    """An entry of /api/ps."""

    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int
    # Not Ollama's: the bytes of this model's saved prompt states, its share of the server's
    # one prompt-cache budget (--cache-ram).
    prompt_cache_bytes: int = 0
    # Not Ollama's either: the element types of the model's K and V cache (f16, q8_0, q4_0),
    # as OLLAMA_KV_CACHE_TYPE sets them for the whole Ollama server.
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    # Not Ollama's: the layers on RPC workers (their bytes are counted in `size`, not in
    # `size_vram`, which is this machine's GPUs).
    rpc: list[RpcShare] = []


class RpcShare(msgspec.Struct, kw_only=True):
    endpoint: str
    device: int
    layers: int
    bytes: int


class PsResponse(msgspec.Struct):
    models: list[RunningModel]


class ModelRequest(msgspec.Struct, kw_only=True):
    """/api/show, /api/pull, /api/delete: the model by `model` (or the older `name`)."""

    json_schema_rules: ClassVar[tuple[dict[str, Any], ...]] = (one_of_named("model", "name"),)

    model: OllamaModelName | None = None
    name: OllamaModelName | None = None
    stream: bool = True
    insecure: bool = False
    verbose: bool = False

    def model_name(self) -> str | None:
        return self.model or self.name


class ShowResponse(msgspec.Struct, kw_only=True):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str
    license: str = ""


class PullProgress(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class StatusResponse(msgspec.Struct):
    status: str


class VersionResponse(msgspec.Struct):
    version: str


class ErrorBody(msgspec.Struct):
    error: str
