"""Model ids: a registry id, or any GGUF file on the Hugging Face hub.

    smollm2-135m-instruct                      an id of models.toml
    owner/repo:file.gguf                       a file of a hub repository (branch main)
    owner/repo@revision:path/to/file.gguf      at a branch, tag or commit
    hf://owner/repo/path/to/file.gguf          the same, as a URL
    hf://owner/repo@revision/file.gguf
    owner/repo:Q4_K_M                          the repository's file of that quantization
    owner/repo                                 its Q4_K_M file, else its smallest (hub_names.py)
    hf.co/owner/repo:Q4_K_M                    as Ollama writes them (also huggingface.co/)

Every hub form names one model: its id is the first form, so a load by any is the same. The
last three name a file only once the repository's files are listed (`HubRef`): whoever
resolves an id passes a `pick` that lists them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec

from locallab_gguf.errors import CustomModelsRefused, InvalidModelId, ModelNotFound
from locallab_gguf.models.registry import ModelSpec, Registry
from locallab_gguf.models.repo_names import NAME, repo_problem

HF_SCHEME = "hf://"
# Ollama's and the hub's web addresses for a repository, which Ollama accepts before a name.
HUB_HOSTS = ("hf.co/", "huggingface.co/")
DEFAULT_REVISION = "main"
HUB_ID_FORMS = (
    "owner/repo:file.gguf, owner/repo:QUANT (such as Q4_K_M), owner/repo, "
    "or hf://owner/repo/file.gguf"
)

_REVISION = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./-]{0,254}")

# Every id that names a model or may name one (an unknown registry id is a 404, a malformed hub
# id a 400), as a regular expression that ECMA (JSON Schema) and Python read alike.
_NO_DOTS = r"(?![A-Za-z0-9_./-]*\.\.)"
_FILE = r"(?:(?!\.\.?/)[^/\\]+/)*[^/\\]*\.[Gg][Gg][Uu][Ff]"
_HUB_ID = rf"{NAME}/{NAME}(?:@{_NO_DOTS}{_REVISION.pattern})?:{_FILE}"
_HUB_URL = rf"hf://{NAME}/{NAME}(?:@{_NO_DOTS}[A-Za-z0-9_.][A-Za-z0-9_.-]{{0,254}})?/{_FILE}"
_QUANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_HOST = r"(?:(?:hf|huggingface)\.co/)?"
_HUB_REF = rf"{_HOST}{NAME}/{NAME}(?:@{_NO_DOTS}{_REVISION.pattern})?(?::{_QUANT.pattern})?"
MODEL_ID_FORMS = rf"[^/:]+|{_HOST}{_HUB_ID}|{_HUB_URL}|{_HUB_REF}"
MODEL_ID_PATTERN = rf"^(?:{MODEL_ID_FORMS})$"


class HubFile(msgspec.Struct, frozen=True):
    repo: str
    file: str
    revision: str = DEFAULT_REVISION

    @property
    def model_id(self) -> str:
        at = "" if self.revision == DEFAULT_REVISION else f"@{self.revision}"
        return f"{self.repo}{at}:{self.file}"


class HubRef(msgspec.Struct, frozen=True):
    """A hub repository and, maybe, a quantization: names a file once its files are listed."""

    repo: str
    quant: str | None = None  # None: the repository's default file
    revision: str = DEFAULT_REVISION

    @property
    def model_id(self) -> str:
        at = "" if self.revision == DEFAULT_REVISION else f"@{self.revision}"
        return f"{self.repo}{at}" + (f":{self.quant}" if self.quant else "")


# Lists a repository's files and picks the one a reference means (ModelFiles.pick_hub_file).
PickHubFile = Callable[[HubRef], HubFile]


def is_hub_id(model_id: str) -> bool:
    """Whether an id is meant as a hub file (registry ids have neither '/' nor ':')."""
    return model_id.startswith(HF_SCHEME) or "/" in model_id or ":" in model_id


def names_repository(model_id: str) -> bool:
    """Whether `model_id` names a hub repository whose file is to be picked (HubRef)."""
    try:
        return is_hub_id(model_id) and isinstance(parse_hub_id(model_id), HubRef)
    except InvalidModelId:
        return False


def parse_hub_id(model_id: str) -> HubFile | HubRef:
    if model_id.startswith(HF_SCHEME):
        owner, _, rest = model_id[len(HF_SCHEME) :].partition("/")
        name, _, file = rest.partition("/")
        repo_part = f"{owner}/{name}"
    else:
        repo_part, colon, file = _without_host(model_id).partition(":")
        if not colon or _QUANT.fullmatch(file):
            return _hub_ref(model_id, repo_part, file or None)
    repo, revision = _repo_revision(model_id, repo_part)
    hub_file = HubFile(repo=repo, file=file, revision=revision)
    _check(model_id, hub_file)
    return hub_file


def _without_host(model_id: str) -> str:
    """`owner/repo...` of `hf.co/owner/repo...`; an id of two names (`hf.co/name`) is a
    repository of the owner `hf.co`, as the hub's rules allow."""
    for host in HUB_HOSTS:
        rest = model_id.removeprefix(host)
        if rest != model_id and "/" in rest.partition(":")[0]:
            return rest
    return model_id


def _repo_revision(model_id: str, repo_part: str) -> tuple[str, str]:
    repo, _, revision = repo_part.partition("@")
    if "@" in repo_part and not revision:
        raise _invalid(model_id, "the revision after '@' is empty")
    return repo, revision or DEFAULT_REVISION


def _hub_ref(model_id: str, repo_part: str, quant: str | None) -> HubRef:
    repo, revision = _repo_revision(model_id, repo_part)
    ref = HubRef(repo=repo, quant=quant, revision=revision)
    # A file's rules, on a stand-in name: the repository and revision are what can be wrong.
    _check(model_id, HubFile(repo=repo, file="x.gguf", revision=revision))
    return ref


def _check(model_id: str, hub_file: HubFile) -> None:
    problem = repo_problem(hub_file.repo)
    if problem is not None:
        raise _invalid(model_id, problem)
    if not _REVISION.fullmatch(hub_file.revision) or ".." in hub_file.revision:
        raise _invalid(model_id, f"{hub_file.revision!r} is not a branch, tag or commit")
    parts = hub_file.file.split("/")
    if not hub_file.file.lower().endswith(".gguf"):
        raise _invalid(
            model_id, "the file must be a .gguf file (or, alone, a quantization such as Q4_K_M)"
        )
    if any(part in ("", ".", "..") for part in parts) or "\\" in hub_file.file:
        raise _invalid(model_id, f"{hub_file.file!r} is not a file path inside the repository")


def _invalid(model_id: str, reason: str) -> InvalidModelId:
    return InvalidModelId(f"model id {model_id!r}: {reason}; name a hub file as {HUB_ID_FORMS}")


def hub_spec(hub_file: HubFile) -> ModelSpec:
    """A ModelSpec for a hub file that the registry does not describe."""
    return ModelSpec(
        id=hub_file.model_id,
        name=hub_file.file.rsplit("/", 1)[-1],
        description=f"{hub_file.repo} on the Hugging Face hub",
        repo=hub_file.repo,
        file=hub_file.file,
        revision=hub_file.revision,
    )


def resolve_model_id(
    registry: Registry, model_id: str, *, allow_custom: bool, pick: PickHubFile | None = None
) -> ModelSpec:
    """The spec a model id names: registry ids first, then hub files.

    A hub id of a file the registry describes gets the registry's entry, so its checksum,
    package and settings apply whichever way the model is named. A repository without a file
    (`owner/repo:Q4_K_M`, `owner/repo`) is resolved by `pick`, which lists its files.
    """
    known = registry.models.get(model_id)
    if known is not None:
        return known
    model_id = registry.aliases.target(model_id) or model_id
    known = registry.models.get(model_id)
    if known is not None:
        return known
    if not is_hub_id(model_id):
        hint = f", or name a GGUF file on the hub as {HUB_ID_FORMS}" if allow_custom else ""
        raise ModelNotFound(
            f"model {model_id!r} is not in the model registry; "
            f"known models: {', '.join(sorted(registry.models))}{hint}"
        )
    parsed = parse_hub_id(model_id)
    if isinstance(parsed, HubRef):
        if not allow_custom:
            raise _refused(registry, model_id)
        if pick is None:
            raise InvalidModelId(
                f"model id {model_id!r} names a repository, not a file, and its files cannot "
                "be listed here; name the file as owner/repo:file.gguf"
            )
        parsed = pick(parsed)
    hub_file = parsed
    for spec in registry.models.values():
        if (spec.repo, spec.file, spec.revision) == (
            hub_file.repo,
            hub_file.file,
            hub_file.revision,
        ):
            return spec
    if not allow_custom:
        raise _refused(registry, model_id)
    return hub_spec(hub_file)


def _refused(registry: Registry, model_id: str) -> CustomModelsRefused:
    known_ids = ", ".join(sorted(registry.models))
    return CustomModelsRefused(
        f"this server serves only the models of its registry ({known_ids}); "
        f"{model_id!r} is not one of them. Ask its operator to add it to models.toml "
        "or to allow hub ids (--custom-models)."
    )


def with_revision(spec: ModelSpec, revision: str) -> ModelSpec:
    """The same model at another branch, tag or commit (what `pull --revision` asks for)."""
    if revision == spec.revision:
        return spec
    hub_file = HubFile(repo=spec.repo, file=spec.file, revision=revision)
    _check(f"{spec.id} at revision {revision}", hub_file)
    # Another revision is another file: the registry's checksum and package no longer apply.
    return msgspec.structs.replace(
        spec, id=hub_file.model_id, revision=revision, sha256=None, size_bytes=None, package=None
    )
