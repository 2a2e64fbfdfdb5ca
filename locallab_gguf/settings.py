"""Server settings: defaults < environment (LOCALLAB_*) < command-line flags, validated once.

Each field's description is its `--help` text; the CLI derives one flag and one environment
variable from every field, so the three can never disagree.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from locallab_gguf.durations import keep_alive_seconds
from locallab_gguf.models.registry import GpuLayers

ENV_PREFIX = "LOCALLAB_"

Port = Annotated[int, Meta(ge=1, le=65535)]
Positive = Annotated[int, Meta(ge=1)]


KvCacheTypeName = Literal["f16", "q8_0", "q4_0"]


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: Annotated[str, Meta(description="address to bind; 0.0.0.0 exposes the server")] = (
        "127.0.0.1"
    )
    port: Annotated[Port, Meta(description="port to listen on")] = 8000
    model: Annotated[
        str | None,
        Meta(
            description="the model to serve: a registry id, or a GGUF file on the hub as "
            "owner/repo:file.gguf, owner/repo:QUANT or owner/repo (default: the registry's)"
        ),
    ] = None
    models_file: Annotated[
        str | None,
        Meta(description="path of the model registry (default: the bundled models.toml)"),
    ] = None
    cache_dir: Annotated[
        str | None,
        Meta(
            description="Hugging Face cache that downloaded models go into (default: "
            "HF_HUB_CACHE, else ~/.cache/huggingface/hub)"
        ),
    ] = None
    offline: Annotated[
        bool,
        Meta(
            description="never contact the Hugging Face hub: only models already here load "
            "(HF_HUB_OFFLINE=1 does the same)"
        ),
    ] = False
    custom_models: Annotated[
        bool,
        Meta(
            description="allow hub files outside the registry (owner/repo:file.gguf) in --model "
            "and POST /models/load; --no-custom-models serves only the registry's models"
        ),
    ] = True
    allow_pull: Annotated[
        bool,
        Meta(
            description="let requests made with a user key download a model they name that is "
            "not on this machine (without it only admin keys make the server download; "
            "without any keys every request may)"
        ),
    ] = False
    max_cache_bytes: Annotated[
        Annotated[int, Meta(ge=0)] | None,
        Meta(
            description="bytes of GGUF files the model cache (--cache-dir) may hold after a "
            "download by the server; a pull or load whose download would pass it is refused "
            "before it starts (default: no limit but the free disk)"
        ),
    ] = None
    hf_token: Annotated[
        str | None,
        Meta(description="Hugging Face token for gated or private repos (default: HF_TOKEN)"),
    ] = None
    max_models: Annotated[
        Positive | None,
        Meta(
            description="models resident at once, each in its own worker process; past it "
            "the least recently used idle one is unloaded (default: as many as memory holds)"
        ),
    ] = None
    keep_alive: Annotated[
        str,
        Meta(
            description="how long a model loaded on demand stays once idle: seconds, or 5m, "
            "1h; 0 unloads it after each request, -1 keeps it (the start-up, preload and "
            "default models stay unless a request's keep_alive says otherwise)"
        ),
    ] = "5m"
    autoload: Annotated[
        bool,
        Meta(
            description="load a model a request names when it is not resident; "
            "--no-autoload answers 503 with Retry-After instead"
        ),
    ] = True
    room_wait: Annotated[
        Annotated[float, Meta(ge=0)],
        Meta(
            description="seconds a load waits for busy models to finish when only unloading "
            "them would make room, before it answers 503"
        ),
    ] = 30.0
    threads: Annotated[
        Positive | None, Meta(description="threads for generation (default: physical cores)")
    ] = None
    threads_batch: Annotated[
        Positive | None, Meta(description="threads for prompt processing (default: logical cores)")
    ] = None
    gpu_layers: Annotated[
        GpuLayers | None,
        Meta(
            description="layers to offload to the GPU: auto (as many as fit the free GPU "
            "memory; all on Apple silicon), a number, or -1 for all; beats the registry's "
            "n_gpu_layers (default: the registry's, else auto)"
        ),
    ] = None
    ctx: Annotated[
        Annotated[int, Meta(ge=64)] | Literal["auto"],
        Meta(
            description="context of each request in tokens, prompt and answer together; every "
            "slot holds this much KV cache. auto: the model's trained context where the memory "
            "holds it for every slot, else the most it holds, at least --ctx-floor"
        ),
    ] = "auto"
    ctx_floor: Annotated[
        Annotated[int, Meta(ge=64)],
        Meta(
            description="the least context --ctx auto gives each slot (a model trained for "
            "less gets its trained context); where memory does not hold it, the load is refused"
        ),
    ] = 4096
    parallel: Annotated[
        Annotated[int, Meta(ge=1, le=256)],
        Meta(description="requests decoded together, one KV sequence each"),
    ] = 8
    deterministic: Annotated[
        bool,
        Meta(
            description="a greedy or seeded request gives the same text alone, batched or from "
            "the prompt cache: prompts advance in chunks of 63 tokens (long prompts are several "
            "times slower); needs --kv-layout per-slot"
        ),
    ] = False
    speculative: Annotated[
        Literal["auto", "off"],
        Meta(
            description="speculative decoding: auto drafts the tokens a request's grammar forces "
            "and those its prompt and output repeat, and keeps those the model confirms (the "
            "same answer in fewer steps); off decodes one token per step"
        ),
    ] = "auto"
    draft_max: Annotated[
        Annotated[int, Meta(ge=1, le=62)],
        Meta(
            description="most tokens a slot drafts ahead in one step (the draft length follows "
            "each request's recent acceptance up to this)"
        ),
    ] = 16
    draft_cost: Annotated[
        Annotated[float, Meta(gt=0, le=1)] | None,
        Meta(
            description="what one more token in a decode costs, as a share of a one-token "
            "decode: drafts are taken only while kept often enough to pay for it (default: "
            "measured on each model when it opens, about 0.5 on a 2-core CPU)"
        ),
    ] = None
    draft_model: Annotated[
        str | None,
        Meta(
            description="a smaller model with the same vocabulary that drafts tokens for the "
            "served chat models when neither the grammar nor prompt lookup has any (a registry "
            "id, a hub file or a .gguf path; loaded beside each chat model, with a KV sequence "
            "per slot of its own)"
        ),
    ] = None
    kv_layout: Annotated[
        Literal["per-slot", "unified"],
        Meta(
            description="per-slot: each slot's KV cache apart, a prefix another slot holds is "
            "copied; unified: one pool for all slots, shared prefixes take no memory, but every "
            "token attends over the whole pool (slower as the other slots fill)"
        ),
    ] = "per-slot"
    flash_attn: Annotated[
        Literal["auto", "on", "off"],
        Meta(
            description="llama.cpp's fused flash-attention kernel: auto chooses for the "
            "backend in use"
        ),
    ] = "auto"
    cache_type_k: Annotated[
        KvCacheTypeName,
        Meta(
            description="element type of the K cache: q8_0 takes about half of f16's memory, "
            "q4_0 about a quarter, at some cost in accuracy (models.toml's cache_type_k "
            "beats it)"
        ),
    ] = "f16"
    cache_type_v: Annotated[
        KvCacheTypeName,
        Meta(
            description="element type of the V cache; a quantized one turns flash attention "
            "on, which llama.cpp needs for it (models.toml's cache_type_v beats it)"
        ),
    ] = "f16"
    cache_ram: Annotated[
        Annotated[int, Meta(ge=0)] | None,
        Meta(
            description="MiB of RAM for saved prompt states that later requests restore "
            "instead of recomputing, one budget for all resident models together (the least "
            "recently used state goes first, whichever model holds it); 0 turns the prompt "
            "cache off (default: a quarter of the free memory at start, at most 8192)"
        ),
    ] = None
    prompt_cache_dir: Annotated[
        str | None,
        Meta(
            description="directory that keeps the prompt cache on disk, so its entries outlive "
            "a restart (default: RAM only)"
        ),
    ] = None
    queue_size: Annotated[
        Annotated[int, Meta(ge=0)],
        Meta(description="requests that may wait for a free slot before 503"),
    ] = 64
    default_max_tokens: Annotated[
        Positive,
        Meta(
            description="new tokens LocalLab's own routes (/generate, /chat) generate when a "
            "request does not say; the OpenAI, Anthropic and Ollama routes run until the turn "
            "ends or the context is full, as those APIs do"
        ),
    ] = 512
    max_body_bytes: Annotated[
        Positive, Meta(description="largest request body accepted (413 above it)")
    ] = 1024 * 1024
    header_timeout: Annotated[
        Annotated[float, Meta(gt=0)],
        Meta(
            description="seconds a client has to send a request's headers, from its first "
            "byte (or from connecting); a slower one is answered 408 and cut off"
        ),
    ] = 10.0
    body_timeout: Annotated[
        Annotated[float, Meta(gt=0)],
        Meta(
            description="seconds a client has to send a request's whole body once its headers "
            "are in; a slower one is answered 408 and cut off"
        ),
    ] = 30.0
    max_connections: Annotated[
        Positive,
        Meta(
            description="open client connections at most; a connection beyond them is "
            "answered 503 at once and closed"
        ),
    ] = 1000
    engine_isolation: Annotated[
        Literal["process", "thread"],
        Meta(
            description="where the engine runs: a worker process that is restarted if llama.cpp "
            "crashes, or a thread of the server (no isolation)"
        ),
    ] = "process"
    rpc: Annotated[
        tuple[str, ...],
        Meta(
            description="host:port of an RPC worker (`locallab-gguf rpc-worker` on another "
            "machine) whose devices may hold a model's layers; repeatable or comma-separated, "
            "in the order layers are spread. The protocol has no authentication or encryption: "
            "keep workers on a private network",
        ),
    ] = ()
    rpc_use: Annotated[
        Literal["needed", "always"],
        Meta(
            description="needed: a model uses the RPC workers only when it does not fit this "
            "machine, and then only for the layers that do not; always: as many layers as the "
            "workers hold"
        ),
    ] = "needed"
    rpc_wait: Annotated[
        Annotated[float, Meta(ge=0)],
        Meta(
            description="seconds a restarting engine waits for an RPC worker it lost to come "
            "back; the requests in flight resume then, or end with an error naming the worker"
        ),
    ] = 30.0
    shutdown_grace: Annotated[
        Annotated[float, Meta(ge=0)],
        Meta(
            description="seconds that requests in flight get to finish on Ctrl-C or SIGTERM "
            "before they are told the server is stopping"
        ),
    ] = 30.0
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], Meta(description="log verbosity")
    ] = "info"
    log_format: Annotated[
        Literal["text", "json"],
        Meta(
            description="log lines as text, or as one JSON object each (for log collectors); "
            "either way every request gets one access line"
        ),
    ] = "text"
    log_repeat_interval: Annotated[
        Annotated[float, Meta(ge=0)],
        Meta(
            description="seconds in which a warning or error repeated word for word is logged "
            "once; its next line says how many were left out (0 logs every one)"
        ),
    ] = 10.0
    rate_limit: Annotated[
        bool, Meta(description="limit requests per client; --no-rate-limit serves without limits")
    ] = True
    requests_per_minute: Annotated[
        Positive, Meta(description="requests a client may make in any trailing 60 s")
    ] = 60
    burst: Annotated[
        Positive, Meta(description="requests a client may make in any trailing 1 s")
    ] = 10
    rate_limit_store: Annotated[
        str,
        Meta(
            pattern=r"^(memory|rediss?://.+|unix://.+)$",
            description="where request times are kept: memory (this process) or "
            "redis://host:port/db (one limit shared by every replica using it)",
        ),
    ] = "memory"
    rate_limit_fail: Annotated[
        Literal["open", "closed"],
        Meta(description="when the store is unreachable: open serves unlimited; closed, 503"),
    ] = "open"
    rate_limit_max_clients: Annotated[
        Positive,
        Meta(
            description="clients the memory store tracks at once; past it the least recently "
            "seen are forgotten"
        ),
    ] = 100_000
    api_keys: Annotated[
        tuple[str, ...],
        Meta(
            description="a key clients must send as 'Authorization: Bearer KEY' (repeatable; "
            "the environment variable takes a comma-separated list); /health and the chat "
            "page's own files stay open. 'admin:KEY' makes KEY an admin key (load, unload, "
            "pull, delete); others are user keys",
            extra={"flag": "api-key"},
        ),
    ] = ()
    api_key_file: Annotated[
        str | None,
        Meta(
            description="file of further API keys, one per line, 'admin:KEY' for an admin key; "
            "# starts a comment"
        ),
    ] = None
    aliases: Annotated[
        tuple[str, ...],
        Meta(
            description="NAME=MODEL: a model name a client insists on (claude-sonnet-4-5, or "
            "a glob such as 'claude-*') that means MODEL of this server (repeatable; beats "
            "models.toml [aliases])",
            extra={"flag": "alias"},
        ),
    ] = ()
    client_id_header: Annotated[
        str | None,
        Meta(
            description="header naming the end user behind a front-end (e.g. "
            "X-OpenWebUI-User-Id), so each user gets a rate-limit window of their own; "
            "believed only from a --trusted-proxy or with an accepted API key"
        ),
    ] = None
    trusted_proxies: Annotated[
        tuple[str, ...],
        Meta(
            description="address or network (10.0.0.0/8) of a proxy whose X-Forwarded-For and "
            "Forwarded headers name the client (repeatable); none by default",
            extra={"flag": "trusted-proxy"},
        ),
    ] = ()
    cors_origins: Annotated[
        tuple[str, ...],
        Meta(
            description="origin a browser page may call the API from, or * (repeatable); "
            "CORS is off without one",
            extra={"flag": "cors-origin"},
        ),
    ] = ()
    responses_max: Annotated[
        Positive,
        Meta(
            description="responses the Responses API keeps for previous_response_id and GET "
            "/v1/responses/ID; past it the least recently used is forgotten (a 404 after)"
        ),
    ] = 1000
    responses_store: Annotated[
        str | None,
        Meta(
            description="SQLite file that keeps stored responses across restarts (created, "
            "readable by this user only); default: memory only"
        ),
    ] = None
    ui: Annotated[
        bool,
        Meta(
            description="serve the chat page at /; --no-ui serves the API alone (the page calls "
            "the same API as any client, so keys and rate limits apply to it)"
        ),
    ] = True

    @property
    def fixed_ctx(self) -> int | None:
        """--ctx as a number; None for auto (decided at each load by the memory plan)."""
        return None if self.ctx == "auto" else self.ctx

    @property
    def keep_alive_seconds(self) -> float:
        return keep_alive_seconds(self.keep_alive, "--keep-alive")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()
