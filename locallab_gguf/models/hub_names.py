"""Which file of a hub repository `owner/repo:QUANT` or `owner/repo` means.

`:QUANT` picks the model whose file name carries that quantization (case-insensitive, as a
whole word of the name: `Q4_K` is not `Q4_K_M`, nor `Q4_0` `IQ4_0`); a split model counts once,
by its first part. No match is a 404 listing the repository's models; several are a 400 listing
them. A repository alone means its Q4_K_M model (what llama-server's `-hf` and Ollama take by
default), else its smallest. Vision projectors (`mmproj` files) are not models of their own.
"""

from __future__ import annotations

import re

import msgspec

from locallab_gguf.errors import HubFileNotFound, InvalidModelId
from locallab_gguf.models.ids import HubFile, HubRef
from locallab_gguf.models.splits import is_first_part, split_parts
from locallab_gguf.sizes import format_bytes

DEFAULT_QUANT = "Q4_K_M"
_LISTED = 40  # models named in a message, at most


class RepoFile(msgspec.Struct, frozen=True):
    path: str
    size: int


class RepoModel(msgspec.Struct, frozen=True):
    """A model of a repository: its file, or its first part, and the bytes of all its parts."""

    path: str
    size: int


def repo_models(files: list[RepoFile]) -> list[RepoModel]:
    sizes = {file.path: file.size for file in files}
    models = []
    for file in sorted(files, key=lambda f: f.path):
        name = file.path.rsplit("/", 1)[-1].lower()
        if not name.endswith(".gguf") or "mmproj" in name or not is_first_part(file.path):
            continue
        models.append(
            RepoModel(path=file.path, size=sum(sizes.get(p, 0) for p in split_parts(file.path)))
        )
    return models


def carries_quant(path: str, quant: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])", path, re.I) is not None


def pick_file(ref: HubRef, files: list[RepoFile]) -> tuple[HubFile, str]:
    """The file `ref` means among the repository's `files`, and why it was picked, in words."""
    models = repo_models(files)
    if not models:
        raise HubFileNotFound(
            f"{ref.repo} has no GGUF model at revision {ref.revision!r}; this server runs GGUF "
            "files only."
        )
    if ref.quant is not None:
        matches = [model for model in models if carries_quant(model.path, ref.quant)]
        if len(matches) == 1:
            return _file(ref, matches[0]), f"the file of quantization {ref.quant}"
        if not matches:
            raise HubFileNotFound(
                f"{ref.repo} has no GGUF file of quantization {ref.quant!r}; it has "
                f"{_listing(models)}. Name one as {ref.repo}:QUANT or {ref.repo}:file.gguf."
            )
        raise InvalidModelId(
            f"{ref.model_id!r} matches {len(matches)} files of {ref.repo}: {_listing(matches)}; "
            f"name one as {ref.repo}:file.gguf."
        )
    defaults = [model for model in models if carries_quant(model.path, DEFAULT_QUANT)]
    if defaults:
        chosen = min(defaults, key=lambda model: (model.size, model.path))
        return _file(ref, chosen), f"its {DEFAULT_QUANT} file, the default"
    chosen = min(models, key=lambda model: (model.size, model.path))
    why = "its only GGUF file" if len(models) == 1 else f"its smallest file: no {DEFAULT_QUANT}"
    return _file(ref, chosen), why


def _file(ref: HubRef, model: RepoModel) -> HubFile:
    return HubFile(repo=ref.repo, file=model.path, revision=ref.revision)


def _listing(models: list[RepoModel]) -> str:
    shown = ", ".join(f"{model.path} ({format_bytes(model.size)})" for model in models[:_LISTED])
    more = len(models) - _LISTED
    return shown + (f" and {more} more" if more > 0 else "")
