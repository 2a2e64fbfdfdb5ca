"""GGUF files the tests make from the default model: split in parts as llama.cpp's
`gguf-split` writes them, or with larger weights for a header of the same size.

The `gguf` package reads the source (its fields keep their raw bytes); the container is written
here. Each part is a GGUF of its own: the first holds every metadata key, each holds its share
of the tensors, aligned to 32 bytes, and all carry `split.no` (u16), `split.count` (u16) and
`split.tensors.count` (i32), as llama.cpp's loader checks them.
"""

from __future__ import annotations

import struct
from pathlib import Path

_ALIGNMENT = 32
_UINT16, _INT32 = 2, 5


def split_model(source: Path, directory: Path, prefix: str, parts: int) -> list[Path]:
    """Write `source` as `parts` files `{prefix}-0000k-of-0000n.gguf` in `directory`."""
    from gguf import GGUFReader

    reader = GGUFReader(source)
    metadata = [_raw(field) for key, field in reader.fields.items() if not key.startswith("GGUF.")]
    tensors = list(reader.tensors)
    share = -(-len(tensors) // parts)
    paths = []
    for number in range(parts):
        own = tensors[number * share : (number + 1) * share]
        keys = [
            _key("split.no", _UINT16, struct.pack("<H", number)),
            _key("split.count", _UINT16, struct.pack("<H", parts)),
            _key("split.tensors.count", _INT32, struct.pack("<i", len(tensors))),
        ]
        path = directory / f"{prefix}-{number + 1:05d}-of-{parts:05d}.gguf"
        blobs = [(tensor, bytes(tensor.data.tobytes())) for tensor in own]
        _write(path, (metadata if number == 0 else []) + keys, blobs, scale=1)
        paths.append(path)
    return paths


def grown_model(source: Path, path: Path, scale: int) -> Path:
    """The default model's header and tensor table with each tensor `scale` times as large (its
    weights left as zeros, in a sparse file): what a bigger model's file looks like to a
    reader of its header. llama.cpp cannot run it; the planner can plan it."""
    from gguf import GGUFReader

    reader = GGUFReader(source)
    metadata = [_raw(field) for key, field in reader.fields.items() if not key.startswith("GGUF.")]
    _write(path, metadata, [(tensor, None) for tensor in reader.tensors], scale=scale)
    return path


def _write(
    path: Path, keys: list[bytes], tensors: list[tuple[object, bytes | None]], *, scale: int
) -> None:
    infos = []
    offset = 0
    for tensor, _ in tensors:
        name = tensor.name.encode()  # type: ignore[attr-defined]
        dims = [int(n) for n in tensor.field.parts[3]]  # type: ignore[attr-defined]
        infos.append(
            struct.pack("<Q", len(name))
            + name
            + struct.pack("<I", len(dims))
            + struct.pack(f"<{len(dims)}Q", *dims)
            + struct.pack("<I", int(tensor.tensor_type))  # type: ignore[attr-defined]
            + struct.pack("<Q", offset)
        )
        offset = _aligned(offset + int(tensor.n_bytes) * scale)  # type: ignore[attr-defined]
    head = struct.pack("<4sIQQ", b"GGUF", 3, len(tensors), len(keys)) + b"".join(keys + infos)
    with path.open("wb") as out:
        out.write(head + bytes(_aligned(len(head)) - len(head)))
        start = out.tell()
        for (_, data), info in zip(tensors, infos, strict=True):
            (at,) = struct.unpack("<Q", info[-8:])
            out.seek(start + at)
            if data is not None:
                out.write(data)
        out.truncate(start + offset)  # the last tensor's zeros, as a hole in the file


def _raw(field: object) -> bytes:
    """A metadata key as its bytes in the file: key, type, value."""
    return b"".join(bytes(part.tobytes()) for part in field.parts)  # type: ignore[attr-defined]


def _key(name: str, kind: int, value: bytes) -> bytes:
    encoded = name.encode()
    return struct.pack("<Q", len(encoded)) + encoded + struct.pack("<I", kind) + value


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGNMENT) * _ALIGNMENT
