"""The errors locallab-gguf raises, one tree, each named for what went wrong.

    LocalLabError
    ├── ConfigError              settings or models.toml are invalid (start-up)
    ├── InvalidRequest           a request's parameters cannot be served
    │   ├── InvalidModelId       a hub id that is neither owner/repo:file.gguf nor hf://…
    │   ├── UnsupportedParameter a request field this server does not implement was set
    │   └── TokenNotInVocabulary a token id the model does not have
    ├── CustomModelsRefused      a hub id outside the registry, on a server that refuses them
    ├── ModelNotFound            the model id is not in the registry (nor a hub file)
    ├── PromptTooLong            the prompt does not fit the model's context
    ├── NoModelLoaded            nothing is loaded, so nothing can generate
    │   └── ModelLoading         … yet: a model is loading; retry shortly
    ├── ModelNotResident         --no-autoload, and the model a request names is not loaded
    ├── NoRoomForModel           only unloading models busy with requests would make room
    ├── Overloaded               the request queue is full; retry later
    ├── EngineRestarting         the engine process died and is being restarted; retry shortly
    ├── NotAuthenticated         API keys are required and the request has no valid one
    ├── AdminKeyRequired         a management route (load, unload, pull, delete), a user key
    ├── DownloadRefused          a request would download a model, and its key may not
    ├── RateLimited              the client is over its rate limit; retry after the wait
    ├── RateLimitStoreUnavailable  the limits' store is unreachable, and the server fails closed
    ├── LoadInProgress           another load is already running
    ├── LoadCancelled            the server stopped while a model was downloading or loading
    ├── ModelUnavailable         a model file cannot be resolved (missing, corrupt)
    │   ├── ChecksumMismatch     the file's sha256 is not the expected one
    │   ├── ModelNotCached       offline, and the file is not on this machine
    │   ├── NotEnoughDisk        the download would not fit the free disk
    │   └── DownloadBudgetExceeded  … nor what --max-cache-bytes leaves of the cache
    ├── HubError                 the Hugging Face hub did not deliver the file
    │   ├── HubUnreachable       no answer from the hub (network, DNS, timeout)
    │   ├── HubNotFound          the hub has no such …
    │   │   ├── RepoNotFound         … repository (or it is private)
    │   │   ├── RevisionNotFound     … branch, tag or commit in the repository
    │   │   └── HubFileNotFound      … file at that revision
    │   ├── HubAccessDenied      a gated or private repo; the token is missing or lacks access
    │   └── DownloadInterrupted  the transfer broke off; nothing partial was kept
    ├── ModelTooLarge            the model needs more memory than is free; refused before loading
    ├── ModelLoadFailed          llama.cpp refused to load the file
    ├── EngineFailure            generation failed inside the engine
    ├── ClientDisconnected       the client hung up before its answer was ready
    ├── RequestTimedOut          the client took too long to send its request
    ├── ServerUnreachable        a command (chat --url, ps, stop, run) finds no server there
    ├── ServerRefused            the server answered such a command with an error (its message)
    ├── NotLoadedThere           `stop`: the server does not hold that model
    └── ModelInUse               `rm`: a running server holds the model; stop it there first

The HTTP status of each lives in one table in `locallab_gguf.api.common.errors`; this module knows
nothing of HTTP. Every message says what happened and what to do about it.
"""

from __future__ import annotations


class LocalLabError(Exception):
    """Base class: `str(error)` is a message fit to show a user."""


class ConfigError(LocalLabError):
    pass


class InvalidRequest(LocalLabError):
    pass


class InvalidModelId(InvalidRequest):
    pass


class TokenNotInVocabulary(InvalidRequest):
    """`field` names where the id was sent (`tokens[2]`, `content[1]`)."""

    def __init__(self, field: str, token: int, model_file: str, n_vocab: int) -> None:
        super().__init__(
            f"{field} is {token}, which is not in the vocabulary of {model_file} (ids 0 to "
            f"{n_vocab - 1:,}); send ids that /tokenize gave for this model"
        )


class UnsupportedParameter(InvalidRequest):
    """`param` names the field, as OpenAI's error bodies do."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


class CustomModelsRefused(LocalLabError):
    pass


class ModelNotFound(LocalLabError):
    pass


class PromptTooLong(LocalLabError):
    def __init__(self, prompt_tokens: int, context_length: int) -> None:
        super().__init__(
            f"prompt is {prompt_tokens:,} tokens; the context is {context_length:,}. "
            "Shorten the prompt or load a model with a longer context."
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class InputTooLong(PromptTooLong):
    """One input of an embedding or rerank request is longer than the model encodes."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        LocalLabError.__init__(
            self,
            f"input {index} is {tokens:,} tokens; the model encodes at most {limit:,}. "
            f'Shorten it, or send "truncate": true to encode its first {limit:,} tokens.',
        )
        self.index = index
        self.prompt_tokens = tokens
        self.context_length = limit


class WrongModelKind(InvalidRequest):
    """The request asks a model for what it does not do (text from an embedding model)."""


class NoModelLoaded(LocalLabError):
    def __init__(self, why: str | None = None) -> None:
        because = f" ({why})" if why else ""
        super().__init__(f"no model is loaded{because}; load one with POST /models/load")


class ModelLoading(NoModelLoaded):
    """Nothing serves yet, but a model is on its way: retry, do not load another."""

    retry_after = 2

    def __init__(self, model_id: str) -> None:
        LocalLabError.__init__(
            self,
            f"the model {model_id!r} is loading; retry in {self.retry_after} s "
            f"(GET /models/status/{model_id} follows the load)",
        )
        self.model_id = model_id


class ModelNotResident(LocalLabError):
    """The server does not load models on demand (--no-autoload): retry once it is loaded."""

    retry_after = 5

    def __init__(self, model_id: str) -> None:
        super().__init__(
            f"the model {model_id!r} is not loaded, and this server loads models only when "
            f'asked (--no-autoload): POST /models/load {{"model_id": "{model_id}"}}, or retry '
            f"in {self.retry_after} s"
        )
        self.model_id = model_id


class NoRoomForModel(LocalLabError):
    """Room would come only from unloading models that are serving requests."""

    retry_after = 5

    def __init__(self, model_id: str, reason: str) -> None:
        super().__init__(
            f"the model {model_id!r} was not loaded: {reason}. Retry in {self.retry_after} s, "
            "when they may be idle, or raise --max-models"
        )
        self.model_id = model_id


class Overloaded(LocalLabError):
    def __init__(self, queued: int, retry_after: int) -> None:
        super().__init__(
            f"the server is busy: {queued} requests are already waiting. Retry in {retry_after} s."
        )
        self.queued = queued
        self.retry_after = retry_after


class EngineRestarting(LocalLabError):
    retry_after = 2

    def __init__(self, reason: str) -> None:
        super().__init__(f"the engine is restarting ({reason}); retry in {self.retry_after} s")


class NotAuthenticated(LocalLabError):
    def __init__(self, key_sent: bool) -> None:
        super().__init__(
            "the API key is not valid; send one the server accepts as 'Authorization: Bearer <key>'"
            if key_sent
            else "this server requires an API key; send it as 'Authorization: Bearer <key>'"
        )
        self.key_sent = key_sent


class AdminKeyRequired(LocalLabError):
    """A user key asked for what only an admin key may do: load, unload, pull or delete."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs an admin key; the key sent is a user key. Ask the server's operator "
            "for an admin key (a key line 'admin:KEY' in --api-key-file or --api-key)."
        )


class DownloadRefused(LocalLabError):
    """Serving the request would download a model, and the request may not make the server
    download (a user key without --allow-pull)."""


class RateLimited(LocalLabError):
    def __init__(self, limit: int, window_seconds: float, retry_after: int, policy: str) -> None:
        super().__init__(
            f"Rate limit exceeded: at most {limit} requests in any {window_seconds:g} s. "
            f"Retry in {retry_after} s."
        )
        self.limit = limit
        self.window_seconds = window_seconds
        self.retry_after = retry_after
        self.policy = policy


class RateLimitStoreUnavailable(LocalLabError):
    def __init__(self, retry_after: int = 1) -> None:
        # What went wrong with the store is in the server's log, not in an answer to clients.
        super().__init__(
            "the server cannot check rate limits right now, and refuses requests until it can "
            f"(--rate-limit-fail closed). Retry in {retry_after} s."
        )
        self.retry_after = retry_after


class LoadInProgress(LocalLabError):
    pass


class ModelFilePackaged(LocalLabError):
    """The model's file ships inside a Python package, which owns it: the request is sound,
    the file's state refuses it (409)."""


class LoadCancelled(LocalLabError):
    pass


class ModelUnavailable(LocalLabError):
    pass


class ChecksumMismatch(ModelUnavailable):
    def __init__(
        self,
        path: str,
        expected: str,
        actual: str,
        *,
        expected_by: str = "the registry",
        removed: bool = False,
    ) -> None:
        advice = (
            "It was removed from the cache; pull it again, and if the hashes differ again, "
            f"{expected_by} and the file on the hub disagree."
            if removed
            else f"The file is damaged or not the one {expected_by} names; "
            "remove it and fetch it again."
        )
        super().__init__(
            f"{path} has sha256 {actual}, but {expected_by} expects {expected}. {advice}"
        )
        self.expected = expected
        self.actual = actual


class ModelNotCached(ModelUnavailable):
    pass


class NotEnoughDisk(ModelUnavailable):
    def __init__(self, what: str, needed: int, free: int) -> None:
        super().__init__(
            f"{what} needs {needed:,} bytes, but the disk of the model cache has only "
            f"{free:,} bytes free; nothing was downloaded. Free some space or choose another "
            "--cache-dir."
        )
        self.needed = needed
        self.free = free


class DownloadBudgetExceeded(ModelUnavailable):
    """The server's downloads would pass --max-cache-bytes; refused before the transfer."""

    def __init__(self, what: str, needed: int, left: int, budget: int) -> None:
        super().__init__(
            f"{what} needs {needed:,} bytes, but only {left:,} bytes are left of the "
            f"{budget:,} bytes the server may download into its model cache (--max-cache-bytes); "
            "nothing was downloaded. Delete a model the server downloaded (DELETE /api/delete) "
            "or ask the operator to raise --max-cache-bytes."
        )
        self.needed = needed
        self.left = left
        self.budget = budget


class HubError(LocalLabError):
    pass


class HubUnreachable(HubError):
    pass


class HubNotFound(HubError):
    pass


class RepoNotFound(HubNotFound):
    pass


class RevisionNotFound(HubNotFound):
    pass


class HubFileNotFound(HubNotFound):
    pass


class HubAccessDenied(HubError):
    pass


class DownloadInterrupted(HubError):
    pass


class ModelTooLarge(LocalLabError):
    """Raised before llama.cpp allocates anything: a model that does not fit would get the
    whole process killed by the kernel, taking the model that is serving with it."""

    def __init__(self, message: str, needed_bytes: int, available_bytes: int) -> None:
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes


class ModelLoadFailed(LocalLabError):
    pass


class RpcWorkerUnavailable(ModelLoadFailed):
    """An RPC worker a model's layers are planned on cannot be reached (or is busy with
    another client: ggml's RPC server serves one at a time); the message names it."""


class RpcProtocolMismatch(RpcWorkerUnavailable):
    """An RPC worker answered the handshake with another protocol version than this build's
    llama.cpp speaks; the message names both."""


class EngineFailure(LocalLabError):
    pass


class ClientDisconnected(LocalLabError):
    """Nobody is left to read the answer; the status only tells the logs and metrics."""

    def __init__(self, what: str = "the client disconnected before the answer was ready") -> None:
        super().__init__(what)


class RequestTimedOut(LocalLabError):
    pass


class ServerUnreachable(LocalLabError):
    pass


class ServerRefused(LocalLabError):
    pass


class NotLoadedThere(LocalLabError):
    pass


class ModelInUse(LocalLabError):
    pass
