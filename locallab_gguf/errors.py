"""The errors locallab-gguf raises, one tree, each named for what went wrong.

    LocalLabError
    ├── ConfigError              settings or models.toml are invalid (start-up)
    ├── InvalidRequest           a request's parameters cannot be served
    │   └── ModelNotActive       the request names a registry model that is not loaded
    ├── ModelNotFound            the model id is not in the registry
    ├── PromptTooLong            the prompt does not fit the model's context
    ├── NoModelLoaded            nothing is loaded, so nothing can generate
    ├── Overloaded               the request queue is full; retry later
    ├── LoadInProgress           another load is already running
    ├── ModelUnavailable         a model file cannot be resolved (missing, corrupt)
    │   └── ChecksumMismatch     the file's sha256 is not the registry's
    ├── ModelLoadFailed          llama.cpp refused to load the file
    └── EngineFailure            generation failed inside the engine

The HTTP status of each lives in one table in `locallab_gguf.api.errors`; this module knows
nothing of HTTP. Every message says what happened and what to do about it.
"""

from __future__ import annotations


class LocalLabError(Exception):
    """Base class: `str(error)` is a message fit to show a user."""


class ConfigError(LocalLabError):
    pass


class InvalidRequest(LocalLabError):
    pass


class ModelNotActive(InvalidRequest):
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


class NoModelLoaded(LocalLabError):
    def __init__(self) -> None:
        super().__init__("no model is loaded; load one with POST /models/load")


class Overloaded(LocalLabError):
    def __init__(self, queued: int, retry_after: int) -> None:
        super().__init__(
            f"the server is busy: {queued} requests are already waiting. Retry in {retry_after} s."
        )
        self.retry_after = retry_after


class LoadInProgress(LocalLabError):
    pass


class ModelUnavailable(LocalLabError):
    pass


class ChecksumMismatch(ModelUnavailable):
    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{path} has sha256 {actual}, but the registry expects {expected}. "
            "The file is damaged or not the one the registry names; remove it and fetch it again."
        )
        self.expected = expected
        self.actual = actual


class ModelLoadFailed(LocalLabError):
    pass


class EngineFailure(LocalLabError):
    pass
