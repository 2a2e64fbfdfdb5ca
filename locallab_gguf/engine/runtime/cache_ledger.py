"""One prompt-cache budget for the whole server, shared by every resident model's cache.

Each chat model keeps its saved prompt states in its own worker process, but --cache-ram is
one budget for the server. The ledger is a small file that every model's cache maps into
memory: a row per saved state (an id, when it was last used, its bytes), a table of rows per
cache, and the budget. Every change happens under an exclusive `flock` on the file.

A cache that needs room for a new state evicts the least recently used states first,
whichever cache holds them: its own it drops at once; another cache's it marks as owed, and
that cache drops them at its next step (an idle engine looks every `SETTLE_SECONDS`). A new
state is kept only if the bytes held right now, owed states included, leave room for it: the
caches together never hold more than the budget, and an eviction still pending costs one
skipped save at most.

This module does not import llama.cpp; it knows states only by id and size.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# How often an idle engine checks for states another cache asked it to drop.
SETTLE_SECONDS = 0.2

_MAGIC = b"LLCACHEL"
_VERSION = 1
# magic, version, number of tables, rows per table, budget in bytes
_HEADER = struct.Struct("<8sIIIq")
# owner's pid (0: free), rows in use, bytes held (owed rows included)
_TABLE = struct.Struct("<qqq")
# state id, last used (seconds since the epoch), bytes, owed to another cache (0 or 1)
_ROW = struct.Struct("<qdqq")

DEFAULT_TABLES = 32
DEFAULT_ROWS = 1024


class LedgerFull(Exception):
    """Every table of the ledger belongs to a running cache."""


class _Row:
    __slots__ = ("index", "last_used", "owed", "size", "state_id", "table")

    def __init__(
        self, table: int, index: int, state_id: int, last_used: float, size: int, owed: bool
    ) -> None:
        self.table = table
        self.index = index
        self.state_id = state_id
        self.last_used = last_used
        self.size = size
        self.owed = owed


def create_ledger(
    path: Path, budget_bytes: int, tables: int = DEFAULT_TABLES, rows: int = DEFAULT_ROWS
) -> None:
    """Write an empty ledger: `tables` caches of up to `rows` states, `budget_bytes` in all."""
    size = _HEADER.size + tables * _table_bytes(rows)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as file:
        file.write(_HEADER.pack(_MAGIC, _VERSION, tables, rows, budget_bytes))
        file.truncate(size)
    os.replace(partial, path)


def _table_bytes(rows: int) -> int:
    return _TABLE.size + rows * _ROW.size


def held_bytes(path: Path) -> int:
    """Bytes every running cache on the ledger at `path` holds together."""
    with path.open("rb") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_SH)
        data = file.read()
    _, _, tables, rows, _ = _HEADER.unpack_from(data, 0)
    total = 0
    for table in range(tables):
        owner, _, held = _TABLE.unpack_from(data, _HEADER.size + table * _table_bytes(rows))
        if owner != 0 and _alive(owner):
            total += held
    return total


class LedgerAccount:
    """One cache's table in the ledger, claimed for the life of the cache."""

    def __init__(self, path: Path) -> None:
        # A descriptor of its own: flock serializes open file descriptions, so two caches in
        # one process (the in-process engine) exclude each other as two processes do.
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, 0)
        self._thread_lock = threading.Lock()
        magic, version, tables, rows, budget = _HEADER.unpack_from(self._map, 0)
        self._tables: int = tables
        self._rows: int = rows
        self.budget_bytes: int = budget
        if magic != _MAGIC or version != _VERSION:
            self._map.close()
            os.close(self._fd)
            raise ValueError("not a prompt-cache ledger of this version")
        with self._locked():
            self._table = self._claim()

    # -- what a cache tells the ledger ---------------------------------------------------------

    def make_room(self, size: int, drop_own: Callable[[int], None]) -> bool:
        """Evict least recently used states, across every cache, until `size` more bytes fit
        the budget; True when they fit now. `drop_own` drops one of this cache's states."""
        if size > self.budget_bytes:
            return False
        with self._locked():
            rows = sorted(
                (row for row in self._all_rows() if not row.owed), key=lambda r: r.last_used
            )
            counted = sum(row.size for row in rows)
            for row in rows:
                if counted + size <= self.budget_bytes:
                    break
                counted -= row.size
                if row.table == self._table:
                    drop_own(row.state_id)
                    self._remove_locked(row.state_id)
                else:
                    self._write_row(row.table, row.index, row, owed=True)
            return self._held_locked() + size <= self.budget_bytes

    def added(self, state_id: int, size: int) -> None:
        with self._locked():
            used = self._used(self._table)
            if used >= self._rows:
                raise LedgerFull(f"a cache may keep at most {self._rows} saved states")
            row = _Row(self._table, used, state_id, time.time(), size, owed=False)
            self._write_row(self._table, used, row, owed=False)
            self._set_table(self._table, used + 1, self._table_held(self._table) + size)

    def touched(self, state_id: int) -> None:
        with self._locked():
            for row in self._rows_of(self._table):
                if row.state_id == state_id:
                    row.last_used = time.time()
                    self._write_row(self._table, row.index, row, owed=row.owed)
                    return

    def removed(self, state_id: int) -> None:
        with self._locked():
            self._remove_locked(state_id)

    def owed(self) -> list[int]:
        """The states another cache asked this one to drop."""
        with self._locked():
            return [row.state_id for row in self._rows_of(self._table) if row.owed]

    @property
    def rows_per_cache(self) -> int:
        return self._rows

    def held_bytes(self) -> int:
        """Bytes all caches hold together now."""
        with self._locked():
            return self._held_locked()

    def close(self) -> None:
        if self._map.closed:
            return
        with self._locked():
            self._set_table(self._table, 0, 0, owner=0)
        self._map.close()
        os.close(self._fd)

    # -- the file -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _claim(self) -> int:
        for table in range(self._tables):
            owner = self._owner(table)
            if owner == 0 or not _alive(owner):
                # A table left by a process that died holds nothing any more.
                self._set_table(table, 0, 0, owner=os.getpid())
                return table
        raise LedgerFull(f"the ledger has room for {self._tables} caches, all in use")

    def _offset(self, table: int) -> int:
        return _HEADER.size + table * _table_bytes(self._rows)

    def _owner(self, table: int) -> int:
        owner: int = _TABLE.unpack_from(self._map, self._offset(table))[0]
        return owner

    def _used(self, table: int) -> int:
        used: int = _TABLE.unpack_from(self._map, self._offset(table))[1]
        return used

    def _table_held(self, table: int) -> int:
        held: int = _TABLE.unpack_from(self._map, self._offset(table))[2]
        return held

    def _set_table(self, table: int, used: int, held: int, owner: int | None = None) -> None:
        owner = self._owner(table) if owner is None else owner
        _TABLE.pack_into(self._map, self._offset(table), owner, used, held)

    def _rows_of(self, table: int) -> Iterator[_Row]:
        start = self._offset(table) + _TABLE.size
        for index in range(self._used(table)):
            state_id, last_used, size, owed = _ROW.unpack_from(self._map, start + index * _ROW.size)
            yield _Row(table, index, state_id, last_used, size, bool(owed))

    def _all_rows(self) -> Iterator[_Row]:
        for table in range(self._tables):
            owner = self._owner(table)
            if owner != 0 and (table == self._table or _alive(owner)):
                yield from self._rows_of(table)

    def _held_locked(self) -> int:
        return sum(
            self._table_held(table)
            for table in range(self._tables)
            if (owner := self._owner(table)) != 0 and (table == self._table or _alive(owner))
        )

    def _write_row(self, table: int, index: int, row: _Row, *, owed: bool) -> None:
        start = self._offset(table) + _TABLE.size + index * _ROW.size
        _ROW.pack_into(self._map, start, row.state_id, row.last_used, row.size, int(owed))

    def _remove_locked(self, state_id: int) -> None:
        rows = list(self._rows_of(self._table))
        for row in rows:
            if row.state_id == state_id:
                last = rows[-1]
                if last.index != row.index:  # the last row fills the hole
                    self._write_row(self._table, row.index, last, owed=last.owed)
                self._set_table(
                    self._table, len(rows) - 1, self._table_held(self._table) - row.size
                )
                return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
