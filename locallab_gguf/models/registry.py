"""models.toml -> typed ModelSpec entries."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from locallab_gguf.durations import InvalidKeepAlive, keep_alive_seconds
from locallab_gguf.engine.types import KvCacheType, ModelKind, Pooling
from locallab_gguf.errors import ConfigError, ModelNotFound
from locallab_gguf.models.aliases import Aliases, aliases_of
from locallab_gguf.models.repo_names import repo_problem

Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
NonEmpty = Annotated[str, Meta(min_length=1)]
GpuLayers = Literal["auto"] | Annotated[int, Meta(ge=-1)]
# A duration: seconds, or text such as "5m" (see durations.py); checked when the file is read.
KeepAlive = str | float


class ModelSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One model of the registry; `id` is the key of its table."""

    id: str = ""
    name: NonEmpty
    description: str = ""
    repo: NonEmpty
    file: Annotated[str, Meta(pattern=r"(?i)\.gguf$")]
    revision: NonEmpty = "main"
    sha256: Sha256 | None = None
    size_bytes: Annotated[int, Meta(gt=0)] | None = None
    package: NonEmpty | None = None
    # Context of each request (one KV slot) for this model; beats --ctx.
    context_length: Annotated[int, Meta(ge=64)] | None = None
    chat_template: NonEmpty | None = None
    n_gpu_layers: GpuLayers = "auto"
    # Element types of its KV cache ("f16", "q8_0", "q4_0"); beat --cache-type-k / -v.
    cache_type_k: KvCacheType | None = None
    cache_type_v: KvCacheType | None = None
    # Requests this model decodes together; beats --parallel.
    parallel: Annotated[int, Meta(ge=1, le=256)] | None = None
    # How long the model stays resident once idle, when loaded on demand; beats --keep-alive.
    keep_alive: KeepAlive | None = None
    # Loaded at start-up and kept resident, like the start-up model.
    preload: bool = False
    # What the model is for: "chat" generates; "embedding" answers /v1/embeddings and
    # "reranker" /v1/rerank, each in llama.cpp's embeddings mode in a worker of its own.
    kind: ModelKind = "chat"
    # How an embedding model pools its tokens' vectors ("mean", "cls", "last"); unset: as its
    # GGUF declares. Rerankers pool by "rank" (their classifier head).
    pooling: Pooling | None = None
    # An embedding model trained so that its vectors cut short stay useful (Matryoshka): the
    # fewest numbers a request's `dimensions` may ask for. Unset: `dimensions` is refused.
    min_dimensions: Annotated[int, Meta(ge=1)] | None = None
    # host:port of RPC workers this model always spreads its layers over (as many as they
    # hold), in order; beats --rpc for this model. Empty: --rpc and --rpc-use decide.
    rpc: list[NonEmpty] = []

    @property
    def keep_alive_seconds(self) -> float | None:
        return None if self.keep_alive is None else keep_alive_seconds(self.keep_alive)


class _RegistryFile(msgspec.Struct, forbid_unknown_fields=True):
    default: str
    models: dict[str, dict[str, object]]
    # Names clients insist on -> ids of this registry (models/aliases.py).
    aliases: dict[str, str] = msgspec.field(default_factory=dict)


class Registry(msgspec.Struct, frozen=True):
    default: str
    models: dict[str, ModelSpec]
    source: str
    aliases: Aliases = msgspec.field(default_factory=Aliases)

    def with_aliases(self, more: Aliases, source: str = "--alias") -> Registry:
        """This registry with `more` aliases (beating its own on the same name)."""
        check_alias_targets(more, self.models, source)
        return msgspec.structs.replace(self, aliases=self.aliases.merged(more))

    def get(self, model_id: str) -> ModelSpec:
        spec = self.models.get(model_id)
        if spec is None:
            known = ", ".join(sorted(self.models))
            raise ModelNotFound(
                f"model {model_id!r} is not in the model registry; known models: {known}"
            )
        return spec


def default_models_file() -> Path:
    """The registry beside the source tree, or the copy packed into the wheel."""
    package_dir = Path(__file__).resolve().parent.parent  # locallab_gguf/
    beside_source = package_dir.parent / "models.toml"
    return beside_source if beside_source.is_file() else package_dir / "models.toml"


def load_registry_file(models_file: str | None) -> Registry:
    """The registry at `models_file` (the --models-file setting), else the bundled one."""
    return load_registry(Path(models_file) if models_file else default_models_file())


def load_registry(path: Path) -> Registry:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the model registry {path}: {exc.strerror}") from exc
    return parse_registry(text, source=str(path))


def parse_registry(text: str, source: str) -> Registry:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    try:
        document = msgspec.convert(raw, _RegistryFile)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from exc

    models: dict[str, ModelSpec] = {}
    for model_id, table in document.models.items():
        # Converting entry by entry lets the message name the entry as well as the field.
        try:
            spec = msgspec.convert(table, ModelSpec)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{source}: model {model_id!r}: {exc}") from exc
        try:
            spec.keep_alive_seconds  # noqa: B018 - a bad duration fails now, naming the entry
        except InvalidKeepAlive as exc:
            raise ConfigError(f"{source}: model {model_id!r}: {exc}") from exc
        if spec.kind == "chat" and (spec.pooling is not None or spec.min_dimensions):
            raise ConfigError(
                f"{source}: model {model_id!r}: pooling and min_dimensions are for models of "
                'kind "embedding"; set kind = "embedding"'
            )
        problem = repo_problem(spec.repo)
        if problem is not None:
            raise ConfigError(f"{source}: model {model_id!r}: repo: {problem}")
        if "id" in table:
            raise ConfigError(
                f"{source}: model {model_id!r}: the id is the table's key; remove `id`"
            )
        models[model_id] = msgspec.structs.replace(spec, id=model_id)

    aliases = aliases_of(document.aliases)
    check_alias_targets(aliases, models, source)
    if document.default not in models:
        raise ConfigError(
            f"{source}: default = {document.default!r} names no [models.{document.default}] table"
        )
    return Registry(default=document.default, models=models, source=source, aliases=aliases)


def check_alias_targets(aliases: Aliases, models: Mapping[str, ModelSpec], source: str) -> None:
    """Each alias names a model of the registry or a hub file (owner/repo:file.gguf)."""
    for name, target in (*aliases.exact.items(), *aliases.patterns):
        if target not in models and "/" not in target and ":" not in target:
            raise ConfigError(
                f"{source}: alias {name!r} means {target!r}, which is no model of the "
                f"registry ({', '.join(sorted(models))}) and no hub file"
            )
