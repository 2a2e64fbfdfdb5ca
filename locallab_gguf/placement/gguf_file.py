"""Read a GGUF file's header: its metadata and where each tensor lies, never the weights.

The parser reads from a `ByteSource`: a local file is memory-mapped and only the header pages
are touched, so reading a 40 GB model costs the same few milliseconds as reading a small one;
a file on the hub is read with HTTP range requests (models/hub_range.py), in windows that grow
as the parser asks for more, so only the header and the tensor table cross the network. The
parser only moves forward, so a window keeps nothing behind it. Long arrays (the tokenizer's
vocabulary) are skipped; only their length is kept.

A tensor's size is the distance from its offset to the next tensor's (the last one runs to the
end of the file). That includes the alignment padding, at most `alignment - 1` bytes, and needs
no table of quantization block sizes, so types newer than this reader are sized correctly too.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Protocol

import msgspec

from locallab_gguf.errors import ModelUnavailable

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Arrays longer than this are vocabularies and merges: skipped, only their length kept.
MAX_KEPT_ARRAY = 4096

Scalar = int | float | bool | str
Value = Scalar | list[Scalar]

# GGUF value types: struct format of the fixed-size ones.
_FIXED: dict[int, str] = {
    0: "B",  # uint8
    1: "b",  # int8
    2: "H",  # uint16
    3: "h",  # int16
    4: "I",  # uint32
    5: "i",  # int32
    6: "f",  # float32
    7: "?",  # bool
    10: "Q",  # uint64
    11: "q",  # int64
    12: "d",  # float64
}
_STRING = 8
_ARRAY = 9
# A remote read asks for at least this much, and for more as the header proves long: few
# round trips, and little read past the tensor table.
_FIRST_WINDOW = 256 * 1024
_MAX_WINDOW = 4 * 1024 * 1024
_U64 = struct.Struct("<Q")


class ByteSource(Protocol):
    """Bytes of a GGUF file, read forward: a local file or a file on the hub."""

    @property
    def name(self) -> str:
        """What messages call the file."""
        ...

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer only at the end of the file)."""
        ...


class TensorInfo(msgspec.Struct, frozen=True):
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section
    n_bytes: int


class GgufHeader(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    version: int
    metadata: dict[str, Value]
    array_lengths: dict[str, int]  # every array's length, including the skipped ones
    tensors: list[TensorInfo]
    data_offset: int
    file_size: int

    @property
    def architecture(self) -> str:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else ""


class GgufFormatError(ModelUnavailable):
    def __init__(self, path: Path | str, problem: str) -> None:
        name = Path(path).name
        super().__init__(
            f"{name} is not a GGUF model this server can read ({problem}); "
            "the file is damaged or in another format: remove it and fetch it again"
        )


def read_gguf_header(path: Path) -> GgufHeader:
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _Parser(str(path), _Window.whole(m)).header()
    except OSError as exc:
        raise ModelUnavailable(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # mmap of an empty file
        raise GgufFormatError(path, str(exc)) from exc


def read_gguf_header_from(source: ByteSource) -> GgufHeader:
    """The header of a file read piece by piece (a file on the hub): only what the parser needs."""
    return _Parser(source.name, _Window(source)).header()


class _Window:
    """The bytes around the parser's position: all of a mapped file, or a window of a remote one
    that moves forward and grows as the parser asks for more."""

    def __init__(self, source: ByteSource | None, data: bytes | mmap.mmap = b"", size: int = 0):
        self.source = source
        self.data = data
        self.base = 0  # the file offset of data[0]
        self.size = source.size if source is not None else size
        self.step = _FIRST_WINDOW

    @classmethod
    def whole(cls, data: mmap.mmap) -> _Window:
        return cls(None, data, len(data))

    def at(self, pos: int, length: int) -> int:
        """Where `length` bytes at file offset `pos` start in `data`, reading them if need be."""
        end = pos + length
        if end > self.size:
            raise struct.error("read past the end")
        if pos >= self.base and end <= self.base + len(self.data):
            return pos - self.base
        if self.source is None:
            raise struct.error("read past the end")
        kept = (
            self.data[pos - self.base :] if self.base <= pos < self.base + len(self.data) else b""
        )
        start = pos + len(kept)
        wanted = max(end - start, self.step)
        fresh = self.source.read(start, min(wanted, self.size - start))
        if len(fresh) < end - start:
            raise struct.error("the source ended early")
        self.data = bytes(kept) + fresh
        self.base = pos
        self.step = min(self.step * 2, _MAX_WINDOW)
        return 0


class _Parser:
    def __init__(self, name: str, window: _Window) -> None:
        self.path = name
        self.window = window
        self.pos = 0

    def header(self) -> GgufHeader:
        try:
            return self._header()
        except struct.error as exc:  # read past the end
            raise GgufFormatError(self.path, "the header is cut short") from exc
        except UnicodeDecodeError as exc:
            raise GgufFormatError(self.path, "a key or string is not UTF-8") from exc

    def _header(self) -> GgufHeader:
        if self._bytes(4) != MAGIC:
            raise GgufFormatError(self.path, "it does not start with 'GGUF'")
        self.pos = 4
        version = self._unpack("I")
        if version not in (2, 3):
            # A byte-swapped version means a big-endian file, which llama.cpp on this
            # machine cannot use either.
            raise GgufFormatError(self.path, f"GGUF version {version} is not 2 or 3")
        n_tensors, n_kv = self._unpack("Q"), self._unpack("Q")
        metadata: dict[str, Value] = {}
        array_lengths: dict[str, int] = {}
        for _ in range(n_kv):
            key = self._string()
            kind = self._unpack("I")
            if kind == _ARRAY:
                value, length = self._array()
                array_lengths[key] = length
                if value is not None:
                    metadata[key] = value
            else:
                metadata[key] = self._scalar(kind)
        placed = [self._tensor_info() for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise GgufFormatError(self.path, f"general.alignment is {alignment!r}")
        data_offset = -(-self.pos // alignment) * alignment
        file_size = self.window.size
        return GgufHeader(
            path=self.path,
            version=version,
            metadata=metadata,
            array_lengths=array_lengths,
            tensors=_sized(placed, file_size - data_offset, self.path),
            data_offset=data_offset,
            file_size=file_size,
        )

    def _unpack(self, fmt: str) -> int:
        return int(self._value(fmt))

    def _value(self, fmt: str) -> Scalar:
        size = struct.calcsize(fmt)
        start = self.window.at(self.pos, size)  # may move the window: read `data` after it
        (value,) = struct.unpack_from("<" + fmt, self.window.data, start)
        self.pos += size
        return value  # type: ignore[no-any-return]

    def _bytes(self, length: int) -> bytes:
        start = self.window.at(self.pos, length)
        self.pos += length
        return bytes(self.window.data[start : start + length])

    def _string(self) -> str:
        return self._bytes(self._unpack("Q")).decode("utf-8")

    def _scalar(self, kind: int) -> Scalar:
        if kind == _STRING:
            return self._string()
        fmt = _FIXED.get(kind)
        if fmt is None:
            raise GgufFormatError(self.path, f"unknown metadata type {kind}")
        return self._value(fmt)

    def _array(self) -> tuple[list[Scalar] | None, int]:
        kind, length = self._unpack("I"), self._unpack("Q")
        keep = length <= MAX_KEPT_ARRAY
        fmt = _FIXED.get(kind)
        if fmt is not None:
            size = struct.calcsize(fmt) * length
            values = None
            if keep:
                start = self.window.at(self.pos, size)
                values = list(struct.unpack_from(f"<{length}{fmt}", self.window.data, start))
            self.pos += size  # a skipped array is never read
            return values, length
        if kind == _STRING:
            if not keep:
                self._skip_strings(length)
                return None, length
            return [self._string() for _ in range(length)], length
        raise GgufFormatError(self.path, f"unsupported array element type {kind}")

    def _skip_strings(self, count: int) -> None:
        # The vocabulary's hundred thousand strings: the hot loop of a header read.
        window, pos = self.window, self.pos
        for _ in range(count):
            start = window.at(pos, 8)  # before `data`: the window may move
            (length,) = _U64.unpack_from(window.data, start)
            pos += 8 + length
        self.pos = pos

    def _tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string()
        n_dims = self._unpack("I")
        shape = tuple(self._unpack("Q") for _ in range(n_dims))
        ggml_type = self._unpack("I")
        return name, shape, ggml_type, self._unpack("Q")


def _sized(
    placed: list[tuple[str, tuple[int, ...], int, int]], data_size: int, path: str
) -> list[TensorInfo]:
    by_offset = sorted(placed, key=lambda tensor: tensor[3])
    ends = [tensor[3] for tensor in by_offset[1:]] + [data_size]
    sized = []
    for (name, shape, ggml_type, offset), end in zip(by_offset, ends, strict=True):
        if end < offset:
            raise GgufFormatError(path, f"tensor {name!r} lies past the end of the file")
        sized.append(TensorInfo(name, shape, ggml_type, offset, end - offset))
    return sized
