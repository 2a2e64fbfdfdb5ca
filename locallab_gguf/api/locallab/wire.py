"""The LocalLab API's request and response bodies.

Requests ignore unknown fields (LocalLab clients send extras such as `do_sample`); their
constraints live in the types, so a bad value is refused while decoding, naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

from locallab_gguf.api.common.fields import (
    INT32_MAX,
    KeepAlive,
    ModelId,
    NewTokens,
    Stop,
    UsageBody,
    stop_strings,
)
from locallab_gguf.engine.types import ChatMessage, FinishReason, ModelKind, SamplingParams

Temperature = Annotated[float, Meta(ge=0.0, le=2.0, description="0 = greedy")]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]


class SamplingFields(msgspec.Struct, kw_only=True):
    """Options shared by /generate, /generate/batch and /chat."""

    model_id: ModelId | None = None
    keep_alive: KeepAlive = None
    max_length: NewTokens | None = None
    max_tokens: NewTokens | None = None  # an alias of max_length
    temperature: Temperature = 0.7
    top_p: TopP = 0.9
    top_k: Annotated[int, Meta(ge=0, le=INT32_MAX, description="0 = no limit")] = 40
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=10.0)] = 1.0
    # The same seed repeats its sample; the engine maps it into llama.cpp's 32-bit range.
    seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] | None = None
    stop: Stop = None
    # false: no speculative decoding for this request (default: as the server is set)
    speculative: bool | None = None

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )

    def new_tokens(self, default: int) -> int:
        if self.max_length is not None:
            return self.max_length
        return self.max_tokens if self.max_tokens is not None else default

    def stop_strings(self) -> tuple[str, ...]:
        return stop_strings(self.stop)


class GenerateRequest(SamplingFields, kw_only=True):
    prompt: Annotated[str, Meta(min_length=1)]
    stream: bool = False
    system_prompt: str | None = None


class BatchGenerateRequest(SamplingFields, kw_only=True):
    prompts: Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1, max_length=32)]
    system_prompt: str | None = None


class ChatMessageBody(msgspec.Struct, kw_only=True):
    role: Literal["system", "user", "assistant"]
    content: str

    def to_engine(self) -> ChatMessage:
        return ChatMessage(self.role, self.content)


class ChatRequest(SamplingFields, kw_only=True):
    messages: Annotated[list[ChatMessageBody], Meta(min_length=1)]
    stream: bool = False


class LoadRequest(msgspec.Struct, kw_only=True):
    model_id: ModelId


class UnloadRequest(msgspec.Struct, kw_only=True):
    """POST /models/unload: a model to unload; without one, the default model."""

    model_id: ModelId | None = None


class GenerateResponse(msgspec.Struct):
    response: str
    text: str  # the same string: LocalLab clients read either
    model: str
    finish_reason: FinishReason
    usage: UsageBody


class BatchGenerateResponse(msgspec.Struct):
    responses: list[str]
    usage: UsageBody


class AssistantMessage(msgspec.Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason


class ChatResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageBody


class ChatDelta(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatStreamChoice(msgspec.Struct):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None


class ChatChunk(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    object: Literal["chat.completion.chunk"]  # required, so omit_defaults keeps it
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageBody | None = None  # on the last chunk only


class ModelDescription(msgspec.Struct):
    """What GET /models/current answers for the loaded model."""

    id: str
    name: str
    file: str
    size_bytes: int
    context_length: int
    n_gpu_layers: int
    chat_template_source: Literal["gguf", "registry"] | None
    parallel: int
    is_loaded: bool = True
    draft_model: str | None = None  # the file of the model drafting for it (--draft-model)
    draft_model_refused: str | None = None  # why --draft-model does not draft for this one


class LoadResponse(msgspec.Struct):
    status: Literal["success"]
    message: str
    model: ModelDescription


class LoadAccepted(msgspec.Struct):
    """POST /models/load?wait=false: the load runs on; `status_url` follows it."""

    status: Literal["accepted"]
    message: str
    model_id: str
    status_url: str


class UnloadResponse(msgspec.Struct):
    status: Literal["success"]
    message: str
    # The model unloaded; null when none was resident (`locallab-gguf stop` tells them apart).
    model_id: str | None = None


class AvailableModel(msgspec.Struct):
    id: str
    name: str
    description: str
    kind: ModelKind  # chat models generate; embedding and reranker models only encode
    repo: str
    file: str
    size_bytes: int | None
    is_local: bool
    is_loaded: bool
    is_default: bool


class AvailableModels(msgspec.Struct):
    models: list[AvailableModel]
    current_model: str | None
    default_model: str


class LoadedModel(msgspec.Struct, kw_only=True):
    """One resident model, as GET /models/loaded and /system/info list it. Times are Unix
    seconds; memory is the estimate its load was judged by (0 when none was made)."""

    id: str
    name: str
    is_default: bool
    pinned: bool  # the start-up, preload or default model: never unloaded for being idle
    state: Literal["ready", "restarting", "failed"]
    ram_bytes: int
    vram_bytes: int
    slots_busy: int
    slots_total: int
    queue_depth: int
    requests_in_flight: int
    loaded_at: float
    load_seconds: float
    last_used: float
    keep_alive_seconds: float | None  # null: until unloaded
    unload_at: float | None  # set while an idle unload is scheduled


class ModelActivityBody(msgspec.Struct, kw_only=True):
    """What happened to one model since the server started."""

    loads: int
    load_failures: int
    load_seconds_total: float
    last_load_seconds: float | None
    unloads: dict[str, int]  # by reason: keep_alive, make_room, unload_request, ...


class LoadedModels(msgspec.Struct, kw_only=True):
    models: list[LoadedModel]
    default_model: str | None
    max_models: int | None  # null: as many as the memory holds


class HealthResponse(msgspec.Struct):
    status: Literal["healthy"]
    model: str | None
    model_status: str


# The bodies of /system/info and /models/status. They restate the fields of the domain types
# they are filled from (`body_of`), so renaming an internal field fails loudly in the tests
# instead of silently changing the public JSON.

Backend = Literal["cpu", "cuda", "metal"]


class CpuBody(msgspec.Struct, kw_only=True):
    model: str
    physical_cores: int
    logical_cores: int
    instruction_sets: list[str]
    usage_percent: float


class MemoryBody(msgspec.Struct, kw_only=True):
    total_bytes: int
    available_bytes: int
    used_percent: float


class GpuBody(msgspec.Struct, kw_only=True):
    index: int
    name: str
    uuid: str
    total_memory_bytes: int
    free_memory_bytes: int
    driver_version: str
    compute_capability: str
    cuda_visible: bool


class ThreadsBody(msgspec.Struct, kw_only=True):
    generation: int
    batch: int
    generation_source: str
    batch_source: str


class OffloadBody(msgspec.Struct, kw_only=True):
    backend: Backend
    gpu_layers: int
    total_layers: int
    decided_by: Literal["auto", "setting", "registry"]
    context_per_slot: int
    parallel: int
    weights_bytes: int
    kv_cache_bytes: int
    vram_bytes: int
    ram_bytes: int
    cache_type_k: Literal["f16", "q8_0", "q4_0"] = "f16"
    cache_type_v: Literal["f16", "q8_0", "q4_0"] = "f16"
    # The flash-attention setting the model runs with: "on" where --flash-attn says so or a
    # quantized V cache needs it (`flash_attn_reason` then says so); "auto": llama.cpp's choice.
    flash_attn: Literal["auto", "on", "off"] = "auto"
    flash_attn_reason: str | None = None
    # Layers on RPC workers (counted in gpu_layers; not in vram_bytes or ram_bytes).
    rpc_devices: list[RpcDeviceBody] = []


class RpcDeviceBody(msgspec.Struct, kw_only=True):
    """One RPC worker device's part of the loaded model, as planned at its load."""

    endpoint: str
    device: int
    layers: int
    bytes: int
    free_bytes: int  # what the worker reported free then


class PromptReuseBody(msgspec.Struct, kw_only=True):
    """Prompt tokens not evaluated, by where their KV came from, and the prompt cache."""

    slot_tokens: int
    shared_tokens: int
    ram_tokens: int
    disk_tokens: int
    cache_entries: int
    cache_bytes: int
    cache_capacity_bytes: int
    cache_lookups: int
    cache_hits: int
    cache_hit_rate: float


class SpeculationBody(msgspec.Struct, kw_only=True):
    """Tokens drafted ahead and, of them, those the model confirmed, by source: prompt lookup
    (ngram), the text a grammar forces (grammar) and the draft model (model)."""

    ngram_drafted: int
    ngram_accepted: int
    grammar_drafted: int
    grammar_accepted: int
    model_drafted: int
    model_accepted: int
    extra_token_cost: float  # one more token in a decode, as a share of a step (measured)


class EngineStatsBody(msgspec.Struct, kw_only=True):
    slots_total: int
    slots_busy: int
    queue_depth: int
    queue_capacity: int
    context_size: int
    context_used: int
    prompt_tokens_total: int
    prompt_tokens_evaluated: int
    completion_tokens_total: int
    requests_finished: int
    tokens_per_second: float
    prompt_reuse: PromptReuseBody
    speculation: SpeculationBody


class ModelStatusBody(msgspec.Struct, kw_only=True):
    """GET /models/status/{id}: where one model stands."""

    model_id: str
    status: Literal["downloading", "loading", "loaded", "unloaded", "failed"]
    downloaded_bytes: int | None = None
    total_bytes: int | None = None
    error: str | None = None
    # While a hub model downloads: the GPU layers, context, VRAM and RAM it will load with,
    # planned from its header on the hub before the download started.
    plan: str | None = None


B = TypeVar("B", bound=msgspec.Struct)


def body_of(value: msgspec.Struct, body: type[B]) -> B:
    """The public body `body` filled from a domain Struct with the same fields."""
    return msgspec.convert(msgspec.to_builtins(value), body)
