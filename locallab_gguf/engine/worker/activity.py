"""What the engine worker is doing, noted in memory the server can still read after it died.

A native fault kills the worker without a word, so before each native call it makes for one
request (sampling, grammar, tokenizing) the worker writes that request's id into a small file
shared with the server, and before each `llama_decode` the ids of the whole batch. The server
creates the file, hands its descriptor to the worker, and reads the notes once the worker is
gone: they say which request was being served when it died. Nothing here imports llama_cpp.

Each thread that makes native calls writes its own lane: the engine thread one, each thread
that takes submissions another. A lane is a version counter, what the thread is doing and up
to `max_jobs` job ids; the counter is odd while a note is being written, so a note torn by a
kill in the middle of writing it reads as unknown rather than as a wrong accusation.
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
import tempfile
from typing import IO

import msgspec


class Doing(enum.IntEnum):
    """What a lane's thread was doing when it last wrote a note."""

    NOTHING = 0  # Python code between native calls, or waiting for work
    PREPARING = 1  # one request: tokenizing it, compiling its grammar, setting up its slot
    SAMPLING = 2  # one request: reading its logits, sampling (grammar included), its text
    RELEASING = 3  # one request: freeing its sampler
    DECODING = 4  # llama_decode of a batch; the note holds every job in it
    UNKNOWN = 5  # read only: the note was torn by a kill while it was being written

    def describe(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Doing.NOTHING: "between native calls",
    Doing.PREPARING: "preparing this request (tokenizing it or compiling its grammar)",
    Doing.SAMPLING: "sampling this request's next token",
    Doing.RELEASING: "freeing this request's sampler",
    Doing.DECODING: "decoding a batch that held this request",
    Doing.UNKNOWN: "at an unknown point",
}


class Note(msgspec.Struct, frozen=True):
    doing: Doing
    job_ids: tuple[int, ...] = ()


_HEADER = struct.Struct("<III")  # version, doing, number of job ids
_JOB_ID = struct.Struct("<q")


class ActivityBlock:
    """The shared notes: `create` on the server, `attach` in the worker, `read` after a death."""

    def __init__(self, file: IO[bytes] | None, fd: int, lanes: int, max_jobs: int) -> None:
        self._file = file  # the server's handle; the worker only has the descriptor
        self.fd = fd
        self.lanes = lanes
        self.max_jobs = max_jobs
        self._lane_size = _HEADER.size + _JOB_ID.size * max_jobs
        self._map = mmap.mmap(fd, self._lane_size * lanes)
        self._versions = [0] * lanes

    @classmethod
    def create(cls, lanes: int, max_jobs: int) -> ActivityBlock:
        """A new, zeroed block in an unnamed temporary file (gone when both sides close it)."""
        file = tempfile.TemporaryFile()  # noqa: SIM115 - it lives as long as the block
        size = (_HEADER.size + _JOB_ID.size * max_jobs) * lanes
        os.ftruncate(file.fileno(), size)
        return cls(file, file.fileno(), lanes, max_jobs)

    @classmethod
    def attach(cls, fd: int, lanes: int, max_jobs: int) -> ActivityBlock:
        return cls(None, fd, lanes, max_jobs)

    def write(self, lane: int, doing: Doing, job_ids: tuple[int, ...] | list[int] = ()) -> None:
        count = min(len(job_ids), self.max_jobs)
        offset = lane * self._lane_size
        version = self._versions[lane] + 1  # odd: a note is being written
        view = self._map
        _HEADER.pack_into(view, offset, version, doing, count)
        at = offset + _HEADER.size
        for job_id in job_ids[:count]:
            _JOB_ID.pack_into(view, at, job_id)
            at += _JOB_ID.size
        self._versions[lane] = version + 1
        _HEADER.pack_into(view, offset, version + 1, doing, count)

    def read(self) -> list[Note]:
        """Every lane's last note."""
        notes = []
        for lane in range(self.lanes):
            offset = lane * self._lane_size
            version, doing, count = _HEADER.unpack_from(self._map, offset)
            if version % 2 or doing not in Doing._value2member_map_ or count > self.max_jobs:
                notes.append(Note(Doing.UNKNOWN))
                continue
            ids = tuple(
                _JOB_ID.unpack_from(self._map, offset + _HEADER.size + i * _JOB_ID.size)[0]
                for i in range(count)
            )
            notes.append(Note(Doing(doing), ids))
        return notes

    def close(self) -> None:
        self._map.close()
        if self._file is not None:
            self._file.close()
