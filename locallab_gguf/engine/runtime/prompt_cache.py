"""Saved prompt states: a slot's KV kept in RAM (and optionally on disk) for later requests.

Before a slot's cells are given to a request that does not continue them, the scheduler saves
the slot's state here (`llama_state_seq_get_data`); a later request whose prompt starts with a
saved prompt restores it instead of evaluating it again. Entries are matched on their exact
tokens, never on a hash alone: a hash names a file, nothing more. The least recently used
entries go first once the entries' bytes pass the capacity.

With a directory, every entry is also written to a file that records the cache format, the
llama.cpp build and the model file's sha256; at start the files that match are listed again
(their bytes stay on disk until a request needs them) and any other file is removed with a
log line. This module does not import llama.cpp: the scheduler hands it bytes.

With a ledger (cache_ledger.py), the capacity is the server's one budget, which every resident
model's cache shares: room is made by evicting the least recently used states of any cache,
and states another cache evicted are dropped at `settle`.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import os
import struct
from array import array
from pathlib import Path

from locallab_gguf.engine.runtime.cache_ledger import LedgerAccount
from locallab_gguf.engine.runtime.prefix import common_prefix
from locallab_gguf.engine.types import PromptReuse

log = logging.getLogger(__name__)

# Shorter prompts are cheaper to evaluate again than to keep.
MIN_SAVED_TOKENS = 32
FORMAT_VERSION = 1
MAGIC = b"LLPCACHE"
SUFFIX = ".kvstate"
# magic, format version, length of the build tag, model sha256, token count, state bytes
_HEADER = struct.Struct("<8sIH32sIQ")
_TOKEN = "i"  # llama_token is a 32-bit int
_HASHES_FILE = "model-sha256.json"


class CacheEntry:
    """One saved state: the exact tokens it holds and its bytes (None while on disk only)."""

    __slots__ = ("data", "name", "path", "size", "state_id", "tokens")

    def __init__(
        self,
        tokens: list[int],
        data: bytearray | None,
        size: int,
        name: str,
        path: Path | None,
        state_id: int,
    ) -> None:
        self.state_id = state_id  # its row in the ledger
        self.tokens = tokens
        self.data = data
        self.size = size
        self.name = name
        self.path = path

    @property
    def in_memory(self) -> bool:
        return self.data is not None


class PromptCache:
    def __init__(
        self,
        capacity_bytes: int,
        directory: Path | None = None,
        model_sha256: str | None = None,
        build: str = "",
        ledger: LedgerAccount | None = None,
    ) -> None:
        self._ledger = ledger
        self.capacity_bytes = capacity_bytes if ledger is None else ledger.budget_bytes
        self._directory = directory
        self._model_sha256 = bytes.fromhex(model_sha256) if model_sha256 else b"\0" * 32
        self._build = build.encode()
        self._entries: collections.OrderedDict[str, CacheEntry] = collections.OrderedDict()
        self._names: dict[int, str] = {}  # state id -> entry name
        self._state_ids = itertools.count(1)
        self._bytes = 0
        self.lookups = 0
        self.hits = 0
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._load_directory(directory)

    # -- matching -----------------------------------------------------------------------------

    def longest_match(self, tokens: list[int]) -> tuple[CacheEntry | None, int]:
        """The entry sharing the longest prefix with `tokens`, and that prefix's length.

        Only the shared part of an entry is ever used: restoring it and cutting it at the
        first differing token leaves exactly the cells of `tokens` that both hold.
        """
        best: CacheEntry | None = None
        best_shared = 0
        for entry in self._entries.values():
            shared = common_prefix(entry.tokens, tokens)
            if shared > best_shared:
                best, best_shared = entry, shared
        return best, best_shared

    def holds(self, tokens: list[int]) -> bool:
        """Whether an entry already starts with all of `tokens` (saving them adds nothing)."""
        n = len(tokens)
        return any(
            len(entry.tokens) >= n and entry.tokens[:n] == tokens
            for entry in self._entries.values()
        )

    # -- storing and taking -------------------------------------------------------------------

    def worth_saving(self, tokens: list[int]) -> bool:
        return len(tokens) >= MIN_SAVED_TOKENS and not self.holds(tokens)

    def put(self, tokens: list[int], data: bytearray) -> None:
        """Keep a state; entries it extends are dropped, then the oldest until it fits."""
        if len(data) > self.capacity_bytes or not data:
            return
        name = _name_of(tokens)
        for key, entry in list(self._entries.items()):
            if len(entry.tokens) <= len(tokens) and tokens[: len(entry.tokens)] == entry.tokens:
                self._drop(key)
        if not self._room_for(len(data)):
            return
        path = self._write(name, tokens, data) if self._directory is not None else None
        self._add(CacheEntry(list(tokens), data, len(data), name, path, next(self._state_ids)))
        self._evict_to(self.capacity_bytes)

    @property
    def shared(self) -> bool:
        """Whether other models' caches share this one's budget."""
        return self._ledger is not None

    def settle(self) -> bool:
        """Drop the states another model's cache evicted to make room in the shared budget;
        whether there were any."""
        if self._ledger is None:
            return False
        owed = self._ledger.owed()
        for state_id in owed:
            name = self._names.get(state_id)
            if name is not None:
                self._drop(name)
            else:  # already gone here; only the row is left
                self._ledger.removed(state_id)
        return bool(owed)

    def close(self) -> None:
        """Give this cache's share of the shared budget back."""
        if self._ledger is not None:
            self._ledger.close()

    def _room_for(self, size: int) -> bool:
        if self._ledger is None:
            return True
        while self._entries and len(self._entries) >= self._ledger.rows_per_cache:
            self._drop(next(iter(self._entries)))
        return self._ledger.make_room(size, self._drop_evicted)

    def _drop_evicted(self, state_id: int) -> None:
        # The ledger removes the row itself, under the lock it holds.
        name = self._names.get(state_id)
        if name is not None:
            self._drop(name, tell_ledger=False)

    def _add(self, entry: CacheEntry) -> None:
        self._entries[entry.name] = entry
        self._names[entry.state_id] = entry.name
        self._bytes += entry.size
        if self._ledger is not None:
            self._ledger.added(entry.state_id, entry.size)

    def take(self, entry: CacheEntry) -> bytearray | None:
        """The entry's bytes, read from disk when needed; marks it recently used."""
        if entry.name not in self._entries:
            return None
        self._entries.move_to_end(entry.name)
        if self._ledger is not None:
            self._ledger.touched(entry.state_id)
        if entry.data is None:
            assert entry.path is not None
            entry.data = self._read_state(entry.path, len(entry.tokens), entry.size)
            if entry.data is None:
                self._drop(entry.name)
                return None
        return entry.data

    def forget(self, entry: CacheEntry) -> None:
        """Drop an entry llama.cpp could not restore."""
        if entry.name in self._entries:
            self._drop(entry.name)

    def count_lookup(self, hit: bool) -> None:
        self.lookups += 1
        self.hits += int(hit)

    def stats(self) -> PromptReuse:
        return PromptReuse(
            cache_entries=len(self._entries),
            cache_bytes=self._bytes,
            cache_capacity_bytes=self.capacity_bytes,
            cache_lookups=self.lookups,
            cache_hits=self.hits,
            cache_hit_rate=self.hits / self.lookups if self.lookups else 0.0,
        )

    def _drop(self, key: str, *, tell_ledger: bool = True) -> None:
        entry = self._entries.pop(key)
        del self._names[entry.state_id]
        self._bytes -= entry.size
        if self._ledger is not None and tell_ledger:
            self._ledger.removed(entry.state_id)
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)

    def _evict_to(self, capacity: int) -> None:
        while self._bytes > capacity and self._entries:
            self._drop(next(iter(self._entries)))

    # -- disk ---------------------------------------------------------------------------------

    def _header(self, n_tokens: int, n_bytes: int) -> bytes:
        return (
            _HEADER.pack(
                MAGIC, FORMAT_VERSION, len(self._build), self._model_sha256, n_tokens, n_bytes
            )
            + self._build
        )

    def _write(self, name: str, tokens: list[int], data: bytearray) -> Path:
        assert self._directory is not None
        path = self._directory / (name + SUFFIX)
        partial = path.with_suffix(".partial")
        with partial.open("wb") as file:
            file.write(self._header(len(tokens), len(data)))
            file.write(array(_TOKEN, tokens).tobytes())
            file.write(data)
        os.replace(partial, path)  # a crash mid-write leaves no entry that looks whole
        return path

    def _load_directory(self, directory: Path) -> None:
        for partial in directory.glob("*.partial"):
            partial.unlink(missing_ok=True)
        paths = sorted(directory.glob("*" + SUFFIX), key=lambda path: path.stat().st_mtime_ns)
        for path in paths:
            entry = self._read_entry(path)
            if entry is None:
                continue
            if self._room_for(entry.size):
                self._add(entry)
            else:
                self._reject(path, "the prompt cache's budget is taken by other models")
        self._evict_to(self.capacity_bytes)
        if self._entries:
            log.info(
                "prompt cache: %d saved prompts (%d bytes) found in %s",
                len(self._entries),
                self._bytes,
                directory,
            )

    def _read_entry(self, path: Path) -> CacheEntry | None:
        """The entry a file holds (its bytes left on disk), or None after removing it."""
        try:
            with path.open("rb") as file:
                head = file.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    return self._reject(path, "it is truncated")
                magic, version, build_length, model, n_tokens, n_bytes = _HEADER.unpack(head)
                build = file.read(build_length)
                if magic != MAGIC or version != FORMAT_VERSION:
                    return self._reject(path, "it is not in this cache format")
                if build != self._build:
                    return self._reject(
                        path, f"it was written by another build ({build.decode(errors='replace')})"
                    )
                if model != self._model_sha256:
                    return self._reject(path, "it was written for another model file")
                token_bytes = file.read(n_tokens * array(_TOKEN).itemsize)
                expected = _HEADER.size + build_length + len(token_bytes) + n_bytes
                if len(token_bytes) < n_tokens * 4 or path.stat().st_size != expected:
                    return self._reject(path, "it is truncated")
        except OSError as exc:
            return self._reject(path, f"it cannot be read ({exc})")
        tokens = array(_TOKEN)
        tokens.frombytes(token_bytes)
        return CacheEntry(tokens.tolist(), None, n_bytes, path.stem, path, next(self._state_ids))

    def _read_state(self, path: Path, n_tokens: int, n_bytes: int) -> bytearray | None:
        offset = _HEADER.size + len(self._build) + n_tokens * array(_TOKEN).itemsize
        try:
            with path.open("rb") as file:
                file.seek(offset)
                data = bytearray(file.read(n_bytes))
        except OSError as exc:
            log.warning("prompt cache: %s could not be read (%s); it is dropped", path.name, exc)
            return None
        if len(data) != n_bytes:
            log.warning("prompt cache: %s was truncated; it is dropped", path.name)
            return None
        return data

    @staticmethod
    def _reject(path: Path, reason: str) -> None:
        log.warning("prompt cache: removed %s: %s", path.name, reason)
        path.unlink(missing_ok=True)


def _name_of(tokens: list[int]) -> str:
    return hashlib.sha256(array(_TOKEN, tokens).tobytes()).hexdigest()[:40]


def model_sha256(model: Path, directory: Path) -> str:
    """The model file's sha256, remembered in `directory` per path, size and mtime: hashing
    a model of several GB at every start would delay each load by seconds."""
    stat = model.stat()
    key = f"{model.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    known_file = directory / _HASHES_FILE
    try:
        known: dict[str, str] = json.loads(known_file.read_text())
    except (OSError, ValueError):
        known = {}
    digest = known.get(key)
    if digest is None:
        sha = hashlib.sha256()
        with model.open("rb") as file:
            while chunk := file.read(1 << 20):
                sha.update(chunk)
        digest = sha.hexdigest()
        known[key] = digest
        directory.mkdir(parents=True, exist_ok=True)
        known_file.write_text(json.dumps(known, indent=1))
    return digest
