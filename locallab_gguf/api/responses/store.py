"""Stored responses: what `previous_response_id`, GET, DELETE and input_items read.

A bounded map from response id to the response, its input items and the conversation so far;
past `capacity` the least recently used is forgotten (a later request for it is a 404). Each
response belongs to the API key that created it (None when the server takes no keys), and only
that key finds it. With a path, every change is written through to a SQLite file, and the
most recently stored responses, up to `capacity`, come back at start-up.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

import msgspec

from locallab_gguf.api.responses.sealing import ReasoningSeal
from locallab_gguf.api.responses.wire import Item, ResponseBody
from locallab_gguf.errors import ConfigError


class StoredResponse(msgspec.Struct, kw_only=True):
    response: ResponseBody
    owner: str | None
    input_items: list[Item]  # this request's own input, as GET .../input_items lists it
    # Every item of the conversation up to and including this response's output: what a
    # request naming this one as its previous_response_id continues from.
    history: list[Item]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, stored INTEGER, record BLOB);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB);
"""


class ResponseStore:
    def __init__(self, capacity: int, path: str | None = None) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._counter = 0
        secret = None
        if path is not None:
            self._db = _open(path)
            secret = self._load()
        self.seal = ReasoningSeal(secret)
        if self._db is not None and secret is None:
            with self._db:
                self._db.execute("INSERT INTO secrets VALUES ('reasoning', ?)", (self.seal.secret,))

    def put(self, stored: StoredResponse) -> None:
        response_id = stored.response.id
        with self._lock:
            self._entries[response_id] = stored
            self._entries.move_to_end(response_id)
            evicted = []
            while len(self._entries) > self.capacity:
                evicted.append(self._entries.popitem(last=False)[0])
            if self._db is not None:
                self._counter += 1
                with self._db:
                    self._db.execute(
                        "INSERT OR REPLACE INTO responses VALUES (?, ?, ?)",
                        (response_id, self._counter, msgspec.json.encode(stored)),
                    )
                    self._db.executemany(
                        "DELETE FROM responses WHERE id = ?", [(each,) for each in evicted]
                    )

    def get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        """The response, if it is stored and belongs to `owner`; another key's is None, as
        if it did not exist."""
        with self._lock:
            stored = self._entries.get(response_id)
            if stored is None or stored.owner != owner:
                return None
            self._entries.move_to_end(response_id)
            return stored

    def delete(self, response_id: str, owner: str | None) -> bool:
        with self._lock:
            stored = self._entries.get(response_id)
            if stored is None or stored.owner != owner:
                return False
            del self._entries[response_id]
            if self._db is not None:
                with self._db:
                    self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
            return True

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _load(self) -> bytes | None:
        """The responses the file holds (the newest `capacity`), and the reasoning secret."""
        assert self._db is not None
        rows = self._db.execute(
            "SELECT record, stored FROM responses ORDER BY stored DESC LIMIT ?", (self.capacity,)
        ).fetchall()
        decoder = msgspec.json.Decoder(StoredResponse)
        for record, stored in reversed(rows):
            entry = decoder.decode(record)
            self._entries[entry.response.id] = entry
            self._counter = max(self._counter, stored)
        with self._db:
            self._db.execute(
                "DELETE FROM responses WHERE stored < ?", (rows[-1][1] if rows else 0,)
            )
        secret = self._db.execute("SELECT value FROM secrets WHERE name = 'reasoning'").fetchone()
        return None if secret is None else bytes(secret[0])


def _open(path: str) -> sqlite3.Connection:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False)
        db.executescript(_SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"cannot open the response store {path}: {exc}. Give --responses-store a "
            "writable file path (a SQLite database is created there)."
        ) from exc
    # Stored conversations may hold anything users typed: readable by this user alone.
    Path(path).chmod(0o600)
    return db
