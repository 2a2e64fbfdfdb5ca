"""What goes into the engine and what comes out of it.

These Structs are the whole vocabulary between the HTTP layer and the engine, and they
encode to msgpack, so the engine can live in another thread or another process alike.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls"]

# With `--ctx auto` (the default) each slot gets the longest context up to the model's trained
# length that the memory plan holds, but never less than this floor (--ctx-floor) unless the
# model was trained for less: today's agents send 12,000-token prompts, a chat fits in 4,096.
# An engine opened without a memory plan (benchmarks, the engine's own tests) takes the floor.
DEFAULT_CONTEXT_FLOOR = 4096
# Alternatives reported per token at most: OpenAI's chat API allows up to 20, and the engine
# serves all of them (a partial sort of the logits and a piece of text each).
MAX_TOP_LOGPROBS = 20


class KvLayout(enum.Enum):
    """How the slots' KV sequences sit in llama.cpp's cache.

    PER_SLOT gives each slot a stream of its own (llama.cpp's non-unified KV): a token attends
    over its own sequence's cells only, and a prefix another slot holds is copied over. UNIFIED
    puts every sequence in one pool: a shared prefix is tagged, not copied, but every token
    scans the cells of the whole pool, those of the other slots included. benchmarks/kv_layout.py
    on a 2-core CPU with the default model: beside seven idle slots of 3,000 tokens, one
    sequence decoded at 0.60 x its speed alone in a unified pool and a 3,100-token prompt at
    0.47 x; per slot, the neighbours did not slow either.
    """

    PER_SLOT = "per-slot"
    UNIFIED = "unified"


class FlashAttention(enum.Enum):
    """Whether the context computes attention with llama.cpp's fused flash-attention kernel."""

    AUTO = "auto"  # llama.cpp's choice: on where the backend has the kernel
    ON = "on"
    OFF = "off"


class KvCacheType(enum.Enum):
    """The element type of the K or V cache, as llama-server's -ctk / -ctv name it.

    q8_0 stores 32 values in 34 bytes and q4_0 in 18 (a f16 scale per block), against 64 in
    f16: the cache takes 53 % or 28 % of the memory. A quantized V cache needs llama.cpp's
    flash-attention kernel."""

    F16 = "f16"
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"

    @property
    def quantized(self) -> bool:
        return self is not KvCacheType.F16


def quantized_v_needs_flash_attention(cache_type_v: KvCacheType) -> str:
    return (
        f"a {cache_type_v.value} V cache needs flash attention, which --flash-attn off turns "
        "off: use --flash-attn auto (or on), or --cache-type-v f16"
    )


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A call the assistant made: `arguments` is JSON text, as the model wrote it."""

    id: str
    name: str
    arguments: str


class ChatMessage(msgspec.Struct, frozen=True):
    role: Role
    content: str
    # An assistant's calls; a tool message names the call it answers.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    # An assistant turn's thinking, given back by a client: templates that show past
    # reasoning read it as `reasoning_content`; the others leave it out.
    reasoning: str | None = None


class JsonOutput(msgspec.Struct, frozen=True, kw_only=True):
    """The output must be JSON: any JSON object (`schema` None), or JSON that `schema`, a JSON
    Schema as JSON text, accepts. The engine turns it into a grammar."""

    schema: str | None = None


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """temperature 0 means greedy; a fixed seed makes sampling repeatable."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None
    # (token id, bias added to its logit); a bias of -inf bans the token.
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None  # GBNF: the output can only be text this grammar accepts
    json_output: JsonOutput | None = None  # a grammar the engine derives (grammar stays None)


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A function the model may call; `parameters` is a JSON Schema as JSON text."""

    name: str
    description: str | None = None
    parameters: str | None = None
    # Where the request holds `parameters`, in its API's terms (`tools[2].input_schema`),
    # for errors about the schema; empty: tools[i].parameters.
    where: str = ""


ToolChoiceMode = Literal["auto", "none", "required"]


class ToolUse(msgspec.Struct, frozen=True, kw_only=True):
    """The tools of a chat request and how the model may call them.

    `auto`: the model decides, and a call it opens is constrained to the tools' schemas;
    `required`: the answer is one or more calls (only to `named` when it is set);
    `none`: no call, though the tools are still described to the model.
    """

    tools: tuple[ToolSpec, ...]
    mode: ToolChoiceMode = "auto"
    named: str | None = None
    parallel: bool = True


# "split": <think>...</think> comes out as ReasoningDelta; "none": the tags stay in the text.
ReasoningFormat = Literal["split", "none"]


class ChatOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How a chat is rendered and its output read (OpenAI's /v1 sets them; /chat does not)."""

    tool_use: ToolUse | None = None
    reasoning: ReasoningFormat = "none"
    # Extra variables for the chat template (e.g. enable_thinking), as a JSON object text.
    template_kwargs: str | None = None
    reasoning_effort: str | None = None


class GenerationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Exactly one of `prompt` (raw completion) and `messages` (chat template) is set."""

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    # None: no log-probabilities; n: each token's own and the n most likely at its step.
    logprobs: int | None = None
    chat: ChatOptions = ChatOptions()
    # A conversation's name (OpenAI's `prompt_cache_key`): its requests prefer the slot that
    # holds its prefix, and other named conversations leave that slot alone while another is
    # free (they copy the prefix they share instead of overwriting the conversation).
    cache_key: str | None = None
    # None: as the engine is configured (EngineConfig.speculative); False: never drafted.
    speculative: bool | None = None


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    # Of the prompt: tokens whose KV came from a cache (the slot's own, another slot's, the
    # prompt cache) instead of being evaluated.
    cached_tokens: int = 0
    # Of the completion: tokens the model spent thinking, where thinking is split from the
    # answer (counted as generated, so a token or two around the tags may go either way).
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Accepted(msgspec.Struct, frozen=True, tag=True):
    """The prompt fitted and the request is queued; `prompt_tokens` is its length."""

    prompt_tokens: int


class TokenChoice(msgspec.Struct, frozen=True, array_like=True):
    piece: bytes  # what the token stands for; a character may span several tokens
    logprob: float


class TokenLogprobs(msgspec.Struct, frozen=True):
    """A generated token's log-probability under the model, before any sampling settings,
    and the most likely tokens at its step."""

    piece: bytes
    logprob: float
    top: tuple[TokenChoice, ...] = ()


class TextDelta(msgspec.Struct, frozen=True, tag=True):
    text: str
    # Only when the request asked: the tokens whose text this delta completes.
    logprobs: tuple[TokenLogprobs, ...] = ()


class ReasoningDelta(msgspec.Struct, frozen=True, tag=True):
    """Text of the model's thinking (<think>...</think>), apart from its answer."""

    text: str


class ToolCallStarted(msgspec.Struct, frozen=True, tag=True):
    """The model opened call number `index` to the tool `name`; its arguments follow."""

    index: int
    id: str
    name: str


class ToolCallArguments(msgspec.Struct, frozen=True, tag=True):
    """A piece of call `index`'s arguments (JSON text); the pieces join to the whole."""

    index: int
    text: str


class Finished(msgspec.Struct, frozen=True, tag=True):
    finish_reason: FinishReason
    usage: Usage
    queue_seconds: float = 0.0  # from submission until a slot took the request
    stop_sequence: str | None = None  # the stop string that ended it, if one did


FailureCause = Literal["engine", "request"]


class Failed(msgspec.Struct, frozen=True, tag=True):
    """The request ended without finishing; `detail` says why. `cause` "request": its own
    parameters made it impossible to go on (an answer the client must change, a 400 where the
    status is not sent yet); "engine": the engine failed it."""

    detail: str
    cause: FailureCause = "engine"


Event = TextDelta | ReasoningDelta | ToolCallStarted | ToolCallArguments | Finished | Failed
EventBatch = list[tuple[int, Event]]
"""(request id, event) pairs: what one engine step produced."""


# -- Embeddings and reranking -------------------------------------------------------------

# What a model is for: chat models generate; embedding and reranker models run in llama.cpp's
# embeddings mode and only encode.
ModelKind = Literal["chat", "embedding", "reranker"]
# How the vectors of a sequence's tokens become one vector: their mean, the first token's
# (BERT's [CLS]), the last token's (decoder models such as Qwen3-Embedding), or a
# classifier's score over the first token (rerankers).
Pooling = Literal["mean", "cls", "last", "rank"]


class EmbeddingMode(msgspec.Struct, frozen=True, kw_only=True):
    """The engine encodes instead of generating. `pooling` None: the one the GGUF declares."""

    kind: Literal["embedding", "reranker"] = "embedding"
    pooling: Pooling | None = None


class EmbeddingRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Each input is a text (tokenized with the model's special tokens) or token ids (used as
    they are); the vectors come back in the order of the inputs."""

    inputs: tuple[str | tuple[int, ...], ...]
    normalize: bool = True  # to unit length (L2), as OpenAI's vectors are
    truncate: bool = False  # cut inputs longer than the model takes instead of refusing them
    dimensions: int | None = None  # keep the first n numbers (before normalizing)


class RerankRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """One relevance score of each document to the query, in the order of the documents."""

    query: str
    documents: tuple[str, ...]
    truncate: bool = False


class Embeddings(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """`vectors`: `count` rows of `dimensions` little-endian float32s, one row per input."""

    vectors: bytes
    count: int
    dimensions: int
    prompt_tokens: int


class Rankings(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    scores: tuple[float, ...]
    prompt_tokens: int


EncodeRequest = EmbeddingRequest | RerankRequest
EncodeResult = Embeddings | Rankings


class EngineInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a loaded engine is: fixed from load to unload."""

    context_length: int
    trained_context_length: int
    n_layer: int
    n_gpu_layers: int
    model_size_bytes: int
    chat_template_source: Literal["gguf", "registry"] | None
    parallel: int
    n_vocab: int  # ids 0 to n_vocab - 1
    # (tokens per slot, slots) of the KV cache it opened: an encoder's inputs share one
    # context, so its `parallel` inputs a decode are not slots of their own.
    kv_shape: tuple[int, int]
    cache_type_k: KvCacheType = KvCacheType.F16
    cache_type_v: KvCacheType = KvCacheType.F16
    # The flash-attention setting the context was created with (AUTO: llama.cpp's choice).
    flash_attn: FlashAttention = FlashAttention.AUTO
    rpc: RpcLayers | None = None  # the layers on RPC workers, as loaded
    draft_model: str | None = None  # the file of the model that drafts for it
    draft_model_refused: str | None = None  # why --draft-model does not draft for it


class PromptReuse(msgspec.Struct, frozen=True, kw_only=True):
    """Prompt tokens the engine did not evaluate, by where their KV came from, and the
    prompt cache's contents."""

    slot_tokens: int = 0  # the request's own slot still held them
    shared_tokens: int = 0  # another slot held them, or was evaluating them
    ram_tokens: int = 0  # restored from the prompt cache in RAM
    disk_tokens: int = 0  # restored from the prompt cache on disk
    cache_entries: int = 0
    cache_bytes: int = 0
    cache_capacity_bytes: int = 0
    cache_lookups: int = 0  # requests that looked in the prompt cache
    cache_hits: int = 0  # of them, those that restored an entry
    cache_hit_rate: float = 0.0


class SpeculationStats(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens drafted ahead and, of them, those the model confirmed, by source."""

    ngram_drafted: int = 0  # copied from the request's own prompt and output
    ngram_accepted: int = 0
    grammar_drafted: int = 0  # the text the request's grammar forces
    grammar_accepted: int = 0
    model_drafted: int = 0  # the draft model's guesses (--draft-model)
    model_accepted: int = 0
    # What one more token in a decode costs here, as a share of a one-token decode (measured
    # when the engine opened): drafts pay when more of them are kept than this implies.
    extra_token_cost: float = 0.0


class EngineStats(msgspec.Struct, frozen=True, kw_only=True):
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
    prompt_reuse: PromptReuse = PromptReuse()
    speculation: SpeculationStats = SpeculationStats()


class RpcLayers(msgspec.Struct, frozen=True, kw_only=True):
    """A model's layers on RPC workers (placement/rpc_split.py plans them).

    llama.cpp lists the workers' devices first, in the order they are attached, then the local
    GPUs; `device_layers` gives each of them its layer count in that order (llama.cpp's
    tensor_split), and their sum is the model's n_gpu_layers."""

    devices: list[RpcDeviceShare]  # each worker device's part, in llama.cpp's order
    local_gpu_layers: list[int] = []  # the local GPUs' layers, which follow the workers'
    # How long a starting engine waits for a worker that does not answer: a restart after the
    # worker was lost waits this long for it to come back (a first load was probed just
    # before, so it finds the workers there).
    wait_s: float = 0.0

    @property
    def endpoints(self) -> list[str]:
        """host:port of each worker, in the order they are attached."""
        return list(dict.fromkeys(share.endpoint for share in self.devices))

    @property
    def device_layers(self) -> list[int]:
        return [share.layers for share in self.devices] + self.local_gpu_layers

    @property
    def worker_layers(self) -> int:
        """The layers on the workers (the rest of n_gpu_layers is on local GPUs)."""
        return sum(share.layers for share in self.devices)


class RpcDeviceShare(msgspec.Struct, frozen=True, kw_only=True):
    """One worker device's part of a model: its layers and the bytes planned for them."""

    endpoint: str
    device: int  # the worker's device index
    layers: int
    bytes: int  # weights, KV cache and compute buffer
    free_bytes: int  # what the worker reported free when the load was planned


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    # Tokens per slot; None: auto, the longest context the memory plan holds
    # (placement/context.py), the floor where no plan decides.
    n_ctx: int | None = None
    ctx_floor: int = DEFAULT_CONTEXT_FLOOR  # the least an auto context gets (--ctx-floor)
    n_parallel: int = 8
    n_batch: int = 512
    n_threads: int
    n_threads_batch: int
    queue_size: int = 64
    chat_template: str | None = None  # overrides the GGUF's own
    # True: exactness (63-token prompt chunks, so a request's arithmetic never depends on the
    # batch); False: full speed (prompt chunks as large as the batch).
    deterministic: bool = False
    kv_layout: KvLayout = KvLayout.PER_SLOT
    flash_attn: FlashAttention = FlashAttention.AUTO
    cache_type_k: KvCacheType = KvCacheType.F16
    cache_type_v: KvCacheType = KvCacheType.F16
    prompt_cache_bytes: int = 0  # RAM for saved prompt states; 0: no prompt cache
    prompt_cache_dir: str | None = None  # where saved prompt states outlive a restart
    # The server's prompt-cache ledger (engine/runtime/cache_ledger.py): with it, prompt_cache_bytes
    # is one budget that every resident model's cache shares.
    prompt_cache_ledger: str | None = None
    embedding: EmbeddingMode | None = None  # set: an embedding or reranker model, no generation
    # Speculative decoding (engine/runtime/speculation.py): drafts from prompt lookup and the
    # grammar, at most draft_max tokens per slot and step.
    speculative: bool = True
    draft_max: int = 16
    draft_cost: float | None = None  # one more token's share of a decode; None: measured
    draft_model: str | None = None  # path of a smaller model of the same vocabulary that drafts
    rpc: RpcLayers | None = None  # set: some layers run on RPC workers

    def __post_init__(self) -> None:
        if self.deterministic and self.kv_layout is KvLayout.UNIFIED:
            raise ValueError("the deterministic mode needs the per-slot KV layout")
        if self.cache_type_v.quantized and self.flash_attn is FlashAttention.OFF:
            raise ValueError(quantized_v_needs_flash_attention(self.cache_type_v))

    @property
    def effective_flash_attn(self) -> FlashAttention:
        """The flash-attention setting the context is created with: a quantized V cache turns
        AUTO into ON, since llama.cpp computes attention over a quantized V in that kernel only."""
        if self.cache_type_v.quantized and self.flash_attn is FlashAttention.AUTO:
            return FlashAttention.ON
        return self.flash_attn

    def context_per_slot(self, n_ctx_train: int) -> int:
        """n_ctx, else (auto without a memory plan) the floor, within the trained context."""
        return self.n_ctx or min(n_ctx_train or self.ctx_floor, self.ctx_floor)

    def encoder_input_tokens(self, n_ctx_train: int) -> int:
        """The longest input an embedding or reranker model takes: a slot's context, never
        past the trained length (encoders have learned positions for it and nothing beyond)."""
        per_input = self.context_per_slot(n_ctx_train)
        return min(per_input, n_ctx_train) if n_ctx_train > 0 else per_input

    def encoder_context(self, n_ctx_train: int) -> int:
        """The tokens of an encoder's one context: a batch, and at least one whole input (a
        non-causal model must see each input in one micro-batch)."""
        return max(self.n_batch, self.encoder_input_tokens(n_ctx_train))

    def kv_shape(self, n_ctx_train: int) -> tuple[int, int]:
        """(tokens per slot, slots) of the KV cache this config opens: one context for an
        encoder, whatever its parallel setting; a slot's context times the slots otherwise."""
        if self.embedding is not None:
            return self.encoder_context(n_ctx_train), 1
        return self.context_per_slot(n_ctx_train), self.n_parallel
