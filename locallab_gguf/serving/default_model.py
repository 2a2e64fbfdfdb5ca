"""LocalLab's one default model: which model it is, the load POST /models/load runs, and why
the last load failed. LocalLab's /health, /models/current and requests that name no model read
it; Ollama, OpenAI and Anthropic requests always name their model and never touch it."""

from __future__ import annotations

from locallab_gguf.serving.load_state import LoadProgress, ModelStatus
from locallab_gguf.serving.resident import ResidentModel


class DefaultModel:
    """The default model's state (ModelManager makes it resident and loads it)."""

    def __init__(self) -> None:
        self.id: str | None = None
        # The load POST /models/load started, while it runs: what LocalLab calls "loading".
        self.loading: LoadProgress | None = None
        self.failed = False  # the last POST /models/load failed and no default model serves
        self._load_error: str | None = None  # why the last load, of any model, failed
        self._errors: dict[str, str] = {}  # model id -> why its last load failed

    def make(self, model_id: str) -> None:
        self.id, self.failed = model_id, False

    def clear(self) -> None:
        self.id, self.failed = None, False

    def status(self, model: ResidentModel | None) -> ModelStatus:
        """As LocalLab's /health reports it; `model` is the default model while resident."""
        if self.loading is not None:
            return "loading"  # a download is part of loading, for LocalLab's clients
        if model is not None and model.engine.state != "failed":
            return "restarting" if model.engine.state == "restarting" else "loaded"
        broken = model is not None
        return "failed" if self.failed or broken else "unloaded"

    def last_error(self, model: ResidentModel | None) -> str | None:
        """Why the last load failed, or why the default model (`model`) stopped serving."""
        if model is not None and model.engine.state == "failed":
            return f"model {model.spec.id!r} failed: {model.engine.failure}"
        return self._load_error

    def error_of(self, model_id: str) -> str | None:
        """Why the last load of `model_id` failed, unless it loaded since."""
        return self._errors.get(model_id)

    def load_failed(self, model_id: str, reason: str) -> str:
        """Note that a load failed; returns the error as the API reports it."""
        self._load_error = f"loading {model_id!r} failed: {reason}"
        self._errors[model_id] = self._load_error
        return self._load_error

    def load_succeeded(self, model_id: str) -> None:
        self._errors.pop(model_id, None)
