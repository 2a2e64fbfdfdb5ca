"""Read a GGUF file's header: its metadata and where each tensor lies, never the weights.

The file is memory-mapped and only the header pages are touched, so reading a 40 GB model
costs the same few milliseconds as reading a small one. Long arrays (the tokenizer's
vocabulary) are skipped; only their length is kept.

A tensor's size is the distance from its offset to the next tensor's (the last one runs to the
end of the file). That includes the alignment padding, at most `alignment - 1` bytes, and needs
no table of quantization block sizes, so types newer than this reader are sized correctly too.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

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
    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"{path.name} is not a GGUF model this server can read ({problem}); "
            "the file is damaged or in another format: remove it and fetch it again"
        )


def read_gguf_header(path: Path) -> GgufHeader:
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _Parser(path, m).header()
    except OSError as exc:
        raise ModelUnavailable(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # mmap of an empty file
        raise GgufFormatError(path, str(exc)) from exc


class _Parser:
    def __init__(self, path: Path, data: mmap.mmap) -> None:
        self.path = path
        self.data = data
        self.pos = 0

    def header(self) -> GgufHeader:
        try:
            return self._header()
        except struct.error as exc:  # read past the end
            raise GgufFormatError(self.path, "the header is cut short") from exc
        except UnicodeDecodeError as exc:
            raise GgufFormatError(self.path, "a key or string is not UTF-8") from exc

    def _header(self) -> GgufHeader:
        if self.data[:4] != MAGIC:
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
        file_size = len(self.data)
        return GgufHeader(
            path=str(self.path),
            version=version,
            metadata=metadata,
            array_lengths=array_lengths,
            tensors=_sized(placed, file_size - data_offset, self.path),
            data_offset=data_offset,
            file_size=file_size,
        )

    def _unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def _string(self) -> str:
        length = self._unpack("Q")
        end = self.pos + length
        if end > len(self.data):
            raise struct.error("string past the end")
        text = self.data[self.pos : end].decode("utf-8")
        self.pos = end
        return text

    def _scalar(self, kind: int) -> Scalar:
        if kind == _STRING:
            return self._string()
        fmt = _FIXED.get(kind)
        if fmt is None:
            raise GgufFormatError(self.path, f"unknown metadata type {kind}")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value  # type: ignore[no-any-return]

    def _array(self) -> tuple[list[Scalar] | None, int]:
        kind, length = self._unpack("I"), self._unpack("Q")
        keep = length <= MAX_KEPT_ARRAY
        fmt = _FIXED.get(kind)
        if fmt is not None:
            size = struct.calcsize(fmt) * length
            values = (
                list(struct.unpack_from(f"<{length}{fmt}", self.data, self.pos)) if keep else None
            )
            self.pos += size
            return values, length
        if kind == _STRING:
            strings: list[Scalar] = []
            for _ in range(length):
                if keep:
                    strings.append(self._string())
                else:
                    self.pos += 8 + self._peek_length()
            return (strings if keep else None), length
        raise GgufFormatError(self.path, f"unsupported array element type {kind}")

    def _peek_length(self) -> int:
        (length,) = struct.unpack_from("<Q", self.data, self.pos)
        return int(length)

    def _tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string()
        n_dims = self._unpack("I")
        shape = tuple(self._unpack("Q") for _ in range(n_dims))
        ggml_type = self._unpack("I")
        return name, shape, ggml_type, self._unpack("Q")


def _sized(
    placed: list[tuple[str, tuple[int, ...], int, int]], data_size: int, path: Path
) -> list[TensorInfo]:
    by_offset = sorted(placed, key=lambda tensor: tensor[3])
    ends = [tensor[3] for tensor in by_offset[1:]] + [data_size]
    sized = []
    for (name, shape, ggml_type, offset), end in zip(by_offset, ends, strict=True):
        if end < offset:
            raise GgufFormatError(path, f"tensor {name!r} lies past the end of the file")
        sized.append(TensorInfo(name, shape, ggml_type, offset, end - offset))
    return sized
